package bdd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/obdproject/obd/bddclient"
	"github.com/obdproject/obd/blockdev/fdkeeper"
	"github.com/obdproject/obd/blockdev/fuseloop"
	"golang.org/x/sys/unix"
)

// keeperSocket and keeperPIDFile live in the run dir; a keeper outlives bdd.
func (c *Config) keeperSocket() string  { return filepath.Join(c.RunDir, "fdkeeper.sock") }
func (c *Config) keeperPIDFile() string { return bddclient.KeeperPIDFile(c.RunDir) }

// RunKeeper runs the descriptor keeper for cfg until ctx is done: it holds the
// /dev/fuse descriptors of FUSE devices so that they survive a crash of bdd. bdd
// starts it on demand as a separate process (see Option WithKeeperCommand).
func RunKeeper(ctx context.Context, cfg Config, log *slog.Logger) error {
	if err := os.MkdirAll(cfg.RunDir, 0o700); err != nil {
		return fmt.Errorf("bdd: keeper: %w", err)
	}
	l, err := fdkeeper.Listen(cfg.keeperSocket())
	if err != nil {
		return err
	}
	if err := os.Chmod(cfg.keeperSocket(), 0o600); err != nil {
		l.Close()
		return fmt.Errorf("bdd: keeper: %w", err)
	}
	if err := os.WriteFile(cfg.keeperPIDFile(), []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
		l.Close()
		return fmt.Errorf("bdd: keeper: %w", err)
	}
	srv := fdkeeper.NewServer(log)
	defer srv.Close()
	log.Info("fd keeper serving", "socket", cfg.keeperSocket())
	return srv.Serve(ctx, l)
}

// keeper connects to the fd keeper; when none answers and start is set, it starts
// one with s.keeperCommand. Without a keeper command, or when none runs and start is
// not set, it returns a nil client: FUSE devices then get no crash recovery.
func (s *Server) keeper(ctx context.Context, start bool) (*fdkeeper.Client, error) {
	s.keeperMu.Lock()
	defer s.keeperMu.Unlock()
	if s.keeperClient != nil || len(s.keeperCommand) == 0 {
		return s.keeperClient, nil
	}
	sock := s.cfg.keeperSocket()
	c, err := fdkeeper.Dial(ctx, sock)
	if err != nil {
		if !start {
			return nil, nil
		}
		if err := s.startKeeper(); err != nil {
			return nil, err
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			if c, err = fdkeeper.Dial(ctx, sock); err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			return nil, fmt.Errorf("bdd: keeper did not start: %w", err)
		}
	}
	s.keeperClient = c
	return c, nil
}

// startKeeper launches the keeper in its own session, so that it survives bdd.
func (s *Server) startKeeper() error {
	if err := os.MkdirAll(s.cfg.RunDir, 0o700); err != nil {
		return fmt.Errorf("bdd: keeper: %w", err)
	}
	logf, err := os.OpenFile(filepath.Join(s.cfg.RunDir, "fdkeeper.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("bdd: keeper log: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(s.keeperCommand[0], s.keeperCommand[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("bdd: start keeper: %w", err)
	}
	s.log.Info("started fd keeper", "pid", cmd.Process.Pid)
	// The keeper is not our child to wait for beyond start: release it.
	return cmd.Process.Release()
}

func (s *Server) fuseOptions(d *device, keeper *fdkeeper.Client) fuseloop.Options {
	return fuseloop.Options{
		Dir:      filepath.Join(s.cfg.RunDir, "fuse"),
		Name:     d.spec.ID,
		ReadOnly: d.readOnly(),
		Keeper:   keeper,
		Logger:   s.log, // fuseloop names the device (Name) itself
	}
}

// exposeFUSE serves d through FUSE + loop. With resume it first tries to take over
// the FUSE connection the keeper holds for d, so that a filesystem mounted on the
// loop device keeps working; failing that it cleans up and attaches afresh.
func (s *Server) exposeFUSE(ctx context.Context, d *device, resume bool) error {
	keeper, err := s.keeper(ctx, true)
	if err != nil {
		return err
	}
	opts := s.fuseOptions(d, keeper)
	if resume && keeper != nil {
		fuse, err := keeper.Get(ctx, d.spec.ID)
		switch {
		case err == nil:
			dev, err := fuseloop.Resume(ctx, d.prefetch, fuse, opts)
			if err == nil {
				d.path, d.transport = dev.Path(), dev
				return nil
			}
			fuse.Close()
			s.log.Warn("cannot resume FUSE device; attaching afresh", "device", d.spec.ID, "err", err)
			keeper.Drop(ctx, d.spec.ID)
		case !errors.Is(err, fdkeeper.ErrNotFound):
			return fmt.Errorf("keeper: %w", err)
		}
	}
	if resume {
		// A dead FUSE mount from the previous run would block a fresh one.
		if err := unix.Unmount(filepath.Join(opts.Dir, opts.Name), unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			s.log.Warn("unmounting stale FUSE file", "device", d.spec.ID, "err", err)
		}
	}
	dev, err := fuseloop.Attach(ctx, d.prefetch, opts)
	if err != nil {
		return err
	}
	d.path, d.transport = dev.Path(), dev
	return nil
}

// dropOrphans releases FUSE connections the keeper holds for devices that have no
// state (bdd died between exposing a device and saving it): nothing will ever
// serve them, so requests on them would wait forever.
func (s *Server) dropOrphans(ctx context.Context, specs []DeviceSpec) error {
	keeper, err := s.keeper(ctx, false)
	if err != nil || keeper == nil {
		return err
	}
	keys, err := keeper.Keys(ctx)
	if err != nil {
		return fmt.Errorf("keeper: %w", err)
	}
	known := map[string]bool{}
	for _, spec := range specs {
		known[spec.ID] = true
	}
	var errs []error
	for _, id := range keys {
		if known[id] {
			continue
		}
		s.log.Warn("dropping the FUSE connection of a device without state", "device", id)
		errs = append(errs, s.releaseHeld(ctx, keeper, id))
	}
	return errors.Join(errs...)
}

// releaseHeld drops the FUSE connection the keeper holds for device id, which no bdd
// serves (its state is gone, or its restore failed), and unmounts its FUSE file: requests
// on it fail instead of waiting for ever. keeper nil means bdd's own keeper, if it runs.
func (s *Server) releaseHeld(ctx context.Context, keeper *fdkeeper.Client, id string) error {
	if keeper == nil {
		var err error
		if keeper, err = s.keeper(ctx, false); err != nil || keeper == nil {
			return err
		}
	}
	var errs []error
	if err := keeper.Drop(ctx, id); err != nil && !errors.Is(err, fdkeeper.ErrNotFound) {
		errs = append(errs, fmt.Errorf("keeper: drop %s: %w", id, err))
	}
	file := filepath.Join(s.cfg.RunDir, "fuse", id)
	if err := unix.Unmount(file, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		errs = append(errs, fmt.Errorf("unmount %s: %w", file, err))
	}
	return errors.Join(errs...)
}
