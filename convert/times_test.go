package convert_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/obdproject/obd/convert/ext4fs"
	"github.com/obdproject/obd/convert/internal/fixture"
	"github.com/obdproject/obd/zfile"
)

// TestConvertKeepsTarTimes converts an image whose times lie in the future, at
// the conversion's start and just after it, twice in separate work
// directories: the digests must agree and every file keep the atime and mtime
// its tar gave (to the nanosecond), whatever the clock said while converting.
// Times no tar gives (root, lost+found, missing parents) are ext4fs.FixedTime,
// and ctime and crtime, which userspace cannot set, are FixedTime everywhere. A
// lower directory whose entries a layer changes without listing it keeps the
// times its own tar gave.
func TestConvertKeepsTarTimes(t *testing.T) {
	requireDevices(t)
	now := time.Now() // this conversion's start, give or take; the next one starts later
	future := time.Date(2100, 1, 2, 3, 4, 5, 123456789, time.UTC)
	past := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	at := func(e fixture.Entry, mtime, atime time.Time) fixture.Entry {
		e.ModTime, e.AccessTime = mtime, atime
		return e
	}
	l1 := fixture.MustTar(t,
		at(fixture.Dir("d", 0o755, 0), future.Add(time.Hour), future.Add(2*time.Hour)),
		at(fixture.File("d/future", 0o644, 0, "future\n"), future, future.Add(time.Minute)),
		at(fixture.File("d/gone", 0o644, 0, strings.Repeat("freed blocks ", 1000)), now, now),
		at(fixture.File("now", 0o644, 0, "now\n"), now, now.Add(time.Second)),
		at(fixture.File("soon", 0o644, 0, "soon\n"), now.Add(20*time.Second), now.Add(40*time.Second)),
		at(fixture.File("implicit/sub/file", 0o644, 0, "no parents listed\n"), past, past),
		at(fixture.Symlink("to-d", "d", 0), past, past),
		at(fixture.Dir("o", 0o755, 0), past, past.Add(time.Hour)),
		at(fixture.File("o/hidden", 0o644, 0, "hidden\n"), past, past),
	)
	l2 := fixture.MustTar(t,
		fixture.File("d/.wh.gone", 0o644, 0, ""),
		at(fixture.File("to-d/through-link", 0o644, 0, "via the symlink\n"), now.Add(time.Minute), now.Add(time.Minute)),
		fixture.File("o/.wh..wh..opq", 0o644, 0, ""),
		at(fixture.File("dup", 0o644, 0, strings.Repeat("first ", 1000)), now, now),
		at(fixture.File("dup", 0o644, 0, "second\n"), future, future),
		at(fixture.File("later/file", 0o644, 0, "parent made by layer 2\n"), future, future),
	)
	tmp := t.TempDir()
	src := filepath.Join(tmp, "src")
	if err := fixture.WriteLayout(src, "v1", [][]byte{l1, l2}); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var digests []string
	for _, run := range []string{"1", "2"} {
		res, err := newConverter(t, filepath.Join(tmp, "work"+run), zfile.LZ4).Convert(ctx, "oci:"+src+":v1", "oci:"+filepath.Join(tmp, "dst"+run))
		if err != nil {
			t.Fatal(err)
		}
		digests = append(digests, res.Descriptor.Digest.String())
	}
	if digests[0] != digests[1] {
		t.Errorf("two conversions of the same image differ: %s vs %s", digests[0], digests[1])
	}

	dst := filepath.Join(tmp, "dst1")
	mnt := mountConverted(t, dst, readManifest(t, dst, "latest"))
	fixed := time.Unix(ext4fs.FixedTime, 0)
	for _, c := range []struct {
		name         string
		mtime, atime time.Time
	}{
		{".", fixed, fixed},
		{"lost+found", fixed, fixed},
		{"d", future.Add(time.Hour), future.Add(2 * time.Hour)},
		{"d/future", future, future.Add(time.Minute)},
		{"now", now, now.Add(time.Second)},
		{"soon", now.Add(20 * time.Second), now.Add(40 * time.Second)},
		{"implicit", fixed, fixed},
		{"implicit/sub", fixed, fixed},
		{"implicit/sub/file", past, past},
		{"to-d", past, past},
		{"d/through-link", now.Add(time.Minute), now.Add(time.Minute)},
		{"o", past, past.Add(time.Hour)},
		{"dup", future, future},
		{"later", fixed, fixed},
		{"later/file", future, future},
	} {
		var st unix.Statx_t
		if err := unix.Statx(unix.AT_FDCWD, filepath.Join(mnt, c.name), unix.AT_SYMLINK_NOFOLLOW, unix.STATX_ALL, &st); err != nil {
			t.Error(err)
			continue
		}
		ts := func(s unix.StatxTimestamp) time.Time { return time.Unix(s.Sec, int64(s.Nsec)) }
		if got := ts(st.Mtime); !got.Equal(c.mtime) {
			t.Errorf("%s: mtime %v, want %v", c.name, got.UTC(), c.mtime.UTC())
		}
		if got := ts(st.Atime); !got.Equal(c.atime) {
			t.Errorf("%s: atime %v, want %v", c.name, got.UTC(), c.atime.UTC())
		}
		if got := ts(st.Ctime); !got.Equal(fixed) {
			t.Errorf("%s: ctime %v, want FixedTime", c.name, got.UTC())
		}
		if got := ts(st.Btime); !got.Equal(fixed) {
			t.Errorf("%s: crtime %v, want FixedTime", c.name, got.UTC())
		}
	}
	for _, gone := range []string{"d/gone", "o/hidden"} {
		if err := unix.Access(filepath.Join(mnt, gone), unix.F_OK); err == nil {
			t.Errorf("%s survived its whiteout", gone)
		}
	}
}
