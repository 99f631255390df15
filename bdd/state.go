package bdd

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/obdproject/obd/bddclient"
)

// DeviceSpec is everything needed to bring a device back after a restart. It is
// persisted as <state dir>/devices/<id>.json.
type DeviceSpec struct {
	ID        string      `json:"id"`
	Layers    []LayerSpec `json:"layers"`
	UpperDir  string      `json:"upper_dir,omitempty"`
	UpperSize int64       `json:"upper_size,omitempty"`
	ReadOnly  bool        `json:"read_only,omitempty"`
	Transport string      `json:"transport"`
	// Key is the Attach request's idempotency key, if it had one.
	Key string `json:"key,omitempty"`
}

// LayerSpec is one lower layer: a local file (Path) or a registry blob (Ref, Digest, Size).
type LayerSpec struct {
	Path   string `json:"path,omitempty"`
	Ref    string `json:"ref,omitempty"`
	Digest string `json:"digest,omitempty"`
	Size   int64  `json:"size,omitempty"`
	// RangeTable and RangeTableOffset pin the blob's range table, if it has one.
	RangeTable       string `json:"range_table,omitempty"`
	RangeTableOffset int64  `json:"range_table_offset,omitempty"`
	// URLs are the blob descriptor's URLs; an ipfs://<CID> one reads it through IPFS.
	URLs []string `json:"urls,omitempty"`
	// Indexed, for an ordinary OCI layer blob (Ref, Digest, Size) read through its index,
	// names the index's blobs in the same repository.
	Indexed *IndexSpec `json:"indexed,omitempty"`
}

// IndexSpec names the blobs of an indexed layer's index (docs/FORMAT.md, "Indexed OCI
// images"), each by digest and size.
type IndexSpec struct {
	GzIndex BlobRef `json:"gz_index"`
	Meta    BlobRef `json:"meta"`
	Map     BlobRef `json:"map"`
}

// BlobRef is a blob of a layer's repository.
type BlobRef struct {
	Digest string `json:"digest"`
	Size   int64  `json:"size"`
	// RangeTable and RangeTableOffset pin the blob's range table, if it has one (a seek
	// index has).
	RangeTable       string `json:"range_table,omitempty"`
	RangeTableOffset int64  `json:"range_table_offset,omitempty"`
}

// Name identifies the layer in logs and stats: its path, or ref@digest.
func (l LayerSpec) Name() string { return bddclient.LayerName(l.toAPI()) }

// validID keeps ids usable as file names and safe to pass around.
var validID = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,63}$`)

// StateStore persists device specs, one file per device, each replaced atomically.
type StateStore struct {
	dir string
}

// OpenStateStore creates (if needed) and opens the device state under stateDir.
func OpenStateStore(stateDir string) (*StateStore, error) {
	dir := filepath.Join(stateDir, "devices")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("bdd: state dir: %w", err)
	}
	return &StateStore{dir: dir}, nil
}

func (s *StateStore) path(id string) string { return filepath.Join(s.dir, id+".json") }

// Save writes spec durably: the file is complete on disk (tmp file, fsync, rename,
// fsync of the directory) before Save returns.
func (s *StateStore) Save(spec DeviceSpec) error {
	if !validID.MatchString(spec.ID) {
		return fmt.Errorf("bdd: state: invalid device id %q", spec.ID)
	}
	data, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return fmt.Errorf("bdd: state: encode device %s: %w", spec.ID, err)
	}
	tmp, err := os.CreateTemp(s.dir, spec.ID+".json.tmp*")
	if err != nil {
		return fmt.Errorf("bdd: state: device %s: %w", spec.ID, err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("bdd: state: write device %s: %w", spec.ID, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("bdd: state: sync device %s: %w", spec.ID, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("bdd: state: close device %s: %w", spec.ID, err)
	}
	if err := os.Rename(tmp.Name(), s.path(spec.ID)); err != nil {
		return fmt.Errorf("bdd: state: device %s: %w", spec.ID, err)
	}
	return s.syncDir()
}

func (s *StateStore) syncDir() error {
	d, err := os.Open(s.dir)
	if err != nil {
		return fmt.Errorf("bdd: state: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("bdd: state: sync %s: %w", s.dir, err)
	}
	return nil
}

// Remove deletes a device's state; removing an absent device is not an error.
func (s *StateStore) Remove(id string) error {
	if !validID.MatchString(id) {
		return fmt.Errorf("bdd: state: invalid device id %q", id)
	}
	if err := os.Remove(s.path(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("bdd: state: remove device %s: %w", id, err)
	}
	return s.syncDir()
}

// LoadAll returns every saved spec, sorted by id. Files that cannot be read or
// decoded are reported in the joined error; the good ones are still returned.
func (s *StateStore) LoadAll() ([]DeviceSpec, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("bdd: state: %w", err)
	}
	var specs []DeviceSpec
	var errs []error
	for _, e := range entries {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || !e.Type().IsRegular() {
			continue // leftover temp files end in .tmpNNN
		}
		spec, err := s.load(id)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		specs = append(specs, spec)
	}
	sort.Slice(specs, func(i, j int) bool { return specs[i].ID < specs[j].ID })
	return specs, errors.Join(errs...)
}

func (s *StateStore) load(id string) (DeviceSpec, error) {
	var spec DeviceSpec
	data, err := os.ReadFile(s.path(id))
	if err != nil {
		return spec, fmt.Errorf("bdd: state: device %s: %w", id, err)
	}
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&spec); err != nil {
		return spec, fmt.Errorf("bdd: state: device %s: %w", id, err)
	}
	if spec.ID != id {
		return spec, fmt.Errorf("bdd: state: file %s holds device %q", s.path(id), spec.ID)
	}
	return spec, nil
}

// Exists reports whether a device's state is saved.
func (s *StateStore) Exists(id string) bool {
	_, err := os.Stat(s.path(id))
	return err == nil
}
