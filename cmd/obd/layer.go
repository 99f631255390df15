package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/obdproject/obd/layerblob"
	"github.com/obdproject/obd/lsmt"
	"github.com/obdproject/obd/quantity"
)

func newLayerCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "layer",
		Short: "Create, fill, commit, inspect, check and merge LSMT layers",
	}
	cmd.AddCommand(newLayerCreateCmd(), newLayerImportCmd(), newLayerCommitCmd(), newLayerInfoCmd(),
		newLayerFsckCmd(), newLayerCatCmd(), newLayerMergeCmd())
	return cmd
}

func newLayerCreateCmd() *cobra.Command {
	var size, uuid, parent string
	var sparse bool
	cmd := &cobra.Command{
		Use:     "create [--sparse] --size SIZE DIR",
		Short:   "Create an empty writable layer in DIR",
		Example: "  obd layer create --size 64G ./upper",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			vsize, err := quantity.ParseSize(size)
			if err != nil {
				return fmt.Errorf("--size: %w", err)
			}
			if vsize == 0 || vsize%lsmt.SectorSize != 0 {
				return fmt.Errorf("--size must be a positive multiple of %d bytes", lsmt.SectorSize)
			}
			if err := os.MkdirAll(args[0], 0o755); err != nil {
				return err
			}
			w, err := lsmt.Create(args[0], lsmt.CreateOptions{VirtualSize: int64(vsize), Sparse: sparse, UUID: uuid, ParentUUID: parent})
			if err != nil {
				return err
			}
			return w.Close()
		},
	}
	cmd.Flags().StringVar(&size, "size", "", "virtual disk size (e.g. 64G); required")
	cmd.Flags().BoolVar(&sparse, "sparse", false, "store data in one sparse file instead of a data log and an index log")
	cmd.Flags().StringVar(&uuid, "uuid", "", "layer UUID (default none)")
	cmd.Flags().StringVar(&parent, "parent", "", "parent layer UUID (default none)")
	_ = cmd.MarkFlagRequired("size")
	return cmd
}

func newLayerImportCmd() *cobra.Command {
	var offset string
	cmd := &cobra.Command{
		Use:     "import --offset N DIR RAWFILE",
		Short:   "Write a raw disk image into a writable layer (all-zero 4 KiB blocks are not stored)",
		Example: "  obd layer import --offset 0 ./upper rootfs.ext4",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			off, err := quantity.ParseSize(offset)
			if err != nil {
				return fmt.Errorf("--offset: %w", err)
			}
			w, err := lsmt.OpenWritable(args[0])
			if err != nil {
				return err
			}
			raw, err := os.Open(args[1])
			if err != nil {
				w.Close()
				return err
			}
			defer raw.Close()
			n, err := w.Import(raw, int64(off))
			if err != nil {
				w.Close()
				return fmt.Errorf("import %s at offset %d: %w", args[1], off, err)
			}
			if err := w.Sync(); err != nil {
				w.Close()
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "imported %d non-zero bytes\n", n)
			return w.Close()
		},
	}
	cmd.Flags().StringVar(&offset, "offset", "0", "byte offset in the virtual disk (a multiple of 512)")
	return cmd
}

// outputFlags are the wrapping knobs shared by `layer commit` and `layer merge`.
type outputFlags struct {
	zfileFlags
	tar     bool
	uuid    string
	parent  string
	message string
}

func (f *outputFlags) register(cmd *cobra.Command) {
	f.zfileFlags.register(cmd, "zfile", "")
	cmd.Flags().BoolVar(&f.tar, "tar", false, "wrap the output in a layer tar (the registry blob format)")
	cmd.Flags().StringVar(&f.uuid, "uuid", "", "UUID of the new layer")
	cmd.Flags().StringVar(&f.parent, "parent", "", "parent layer UUID (default: keep the source's)")
	cmd.Flags().StringVar(&f.message, "message", "", "commit message stored in the layer header (up to 255 bytes)")
}

func (f *outputFlags) writeOptions() (layerblob.WriteOptions, error) {
	opts := layerblob.WriteOptions{Tar: f.tar}
	if f.algorithm == "" {
		if f.tar {
			return opts, errors.New("--tar needs --zfile: a registry layer blob is a tar around a ZFile")
		}
		return opts, nil
	}
	z, err := f.options()
	if err != nil {
		return opts, err
	}
	opts.ZFile = &z
	return opts, nil
}

func (f *outputFlags) commitOptions() lsmt.CommitOptions {
	return lsmt.CommitOptions{UUID: f.uuid, ParentUUID: f.parent, Message: f.message}
}

func newLayerCommitCmd() *cobra.Command {
	var of outputFlags
	var seal bool
	cmd := &cobra.Command{
		Use:   "commit [--zfile lz4|zstd] [--block-size BYTES] [--tar] [--parent UUID] [--message TEXT] [--seal] DIR OUT",
		Short: "Commit a writable layer into a read-only layer file",
		Long: "Commit compacts the live data of the writable layer in DIR, sorts its index and writes a\n" +
			"committed layer to OUT, optionally ZFile-compressed and tar-wrapped for a registry.\n" +
			"With --seal the layer is instead sealed in place (its index and a trailer are appended to\n" +
			"its data file, no compaction) and the sealed file is what OUT receives.",
		Example: "  obd layer commit --zfile zstd --block-size 64K --tar ./upper layer.tar\n" +
			"  obd layer commit --seal ./upper layer.lsmt",
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			wopts, err := of.writeOptions()
			if err != nil {
				return err
			}
			w, err := lsmt.OpenWritable(args[0])
			if err != nil {
				return err
			}
			if seal {
				if err := w.Seal(); err != nil {
					w.Close()
					return err
				}
				if err := w.Close(); err != nil {
					return err
				}
				return copyWrapped(filepath.Join(args[0], lsmt.DataFileName), args[1], wopts)
			}
			defer w.Close()
			return writeOutput(args[1], func(out *os.File) error {
				return layerblob.Write(out, wopts, func(dst io.Writer) error {
					_, err := w.Commit(dst, of.commitOptions())
					return err
				})
			})
		},
	}
	of.register(cmd)
	cmd.Flags().BoolVar(&seal, "seal", false, "seal the layer in place instead of compacting it")
	return cmd
}

// copyWrapped writes the file src to out, compressed and tar-wrapped as wopts say.
func copyWrapped(src, out string, wopts layerblob.WriteOptions) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	return writeOutput(out, func(f *os.File) error {
		return layerblob.Write(f, wopts, func(dst io.Writer) error {
			_, err := io.Copy(dst, in)
			return err
		})
	})
}

func newLayerInfoCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "info FILE",
		Short:   "Show a layer's kind, UUIDs, virtual size, segment count and compression",
		Example: "  obd layer info layer.tar",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			out := cmd.OutOrStdout()
			if layerblob.IsWritableDir(args[0]) {
				w, err := lsmt.OpenWritable(args[0])
				if err != nil {
					return err
				}
				defer w.Close()
				h := w.Header()
				fmt.Fprintf(out, "kind:         writable (%s)\n", map[bool]string{true: "sparse", false: "data+index log"}[w.Sparse()])
				printHeader(out, h, len(w.Segments()))
				return nil
			}
			b, err := layerblob.OpenFile(args[0])
			if err != nil {
				return err
			}
			defer b.Close()
			fmt.Fprintf(out, "kind:         %s\n", b.Kind())
			printHeader(out, b.Header(), len(b.Segments()))
			if b.ZFile != nil {
				zi := b.ZFile.Info()
				fmt.Fprintf(out, "compression:  %s, %d-byte blocks, %d blocks, %d -> %d bytes\n",
					zi.Algorithm, zi.BlockSize, zi.Blocks, zi.OriginalSize, zi.StoredSize)
			} else {
				fmt.Fprintf(out, "compression:  none\n")
			}
			return nil
		},
	}
}

func printHeader(out io.Writer, h lsmt.Header, segments int) {
	fmt.Fprintf(out, "uuid:         %s\n", orNone(h.UUID))
	fmt.Fprintf(out, "parent uuid:  %s\n", orNone(h.ParentUUID))
	fmt.Fprintf(out, "virtual size: %d\n", h.VirtualSize)
	fmt.Fprintf(out, "segments:     %d\n", segments)
	if h.Tag != "" {
		fmt.Fprintf(out, "message:      %s\n", h.Tag)
	}
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

func newLayerFsckCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "fsck FILE...",
		Short:   "Check every CRC and index invariant of committed layers; exit 1 naming the first fault",
		Example: "  obd layer fsck base.tar app.tar",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, path := range args {
				b, err := layerblob.OpenFile(path)
				if err != nil {
					return err
				}
				err = b.Verify(cmd.Context())
				b.Close()
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: ok\n", path)
			}
			return nil
		},
	}
}

// openLayers opens the layers named on the command line, lowest first. A writable
// layer directory may be given as the last one; it is returned as the upper.
func openLayers(paths []string) (lower []lsmt.Layer, upper *lsmt.Writable, closeAll func(), err error) {
	var closers []io.Closer
	release := func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i].Close()
		}
	}
	defer func() {
		if err != nil {
			release()
		}
	}()
	for i, p := range paths {
		if layerblob.IsWritableDir(p) {
			if i != len(paths)-1 {
				return nil, nil, nil, fmt.Errorf("%s: a writable layer can only be the top (last) layer", p)
			}
			if upper, err = lsmt.OpenWritable(p); err != nil {
				return nil, nil, nil, err
			}
			closers = append(closers, upper)
			continue
		}
		b, err := layerblob.OpenFile(p)
		if err != nil {
			return nil, nil, nil, err
		}
		lower = append(lower, b)
		closers = append(closers, b)
	}
	return lower, upper, release, nil
}

func newLayerCatCmd() *cobra.Command {
	var offset, length string
	cmd := &cobra.Command{
		Use:     "cat [--offset N --length N] LAYER... > raw",
		Short:   "Write the merged stack (lowest layer first) as a raw disk image to stdout",
		Example: "  obd layer cat base.tar app.tar > disk.img\n  obd layer cat --offset 1M --length 4K base.tar | xxd | head",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			lower, upper, closeAll, err := openLayers(args)
			if err != nil {
				return err
			}
			defer closeAll()
			s, err := lsmt.NewStack(lower, upper)
			if err != nil {
				return err
			}
			size := quantity.Size(s.Size())
			off, err := quantity.ParseSize(offset)
			if err != nil {
				return fmt.Errorf("--offset: %w", err)
			}
			n := size - off
			if length != "" {
				if n, err = quantity.ParseSize(length); err != nil {
					return fmt.Errorf("--length: %w", err)
				}
			}
			if off > size || n < 0 || off+n > size {
				return fmt.Errorf("range [%d, %d) is outside the disk (size %d)", off, off+n, size)
			}
			_, err = io.Copy(cmd.OutOrStdout(), io.NewSectionReader(s, int64(off), int64(n)))
			return err
		},
	}
	cmd.Flags().StringVar(&offset, "offset", "0", "first byte to write")
	cmd.Flags().StringVar(&length, "length", "", "bytes to write (default: to the end of the disk)")
	return cmd
}

func newLayerMergeCmd() *cobra.Command {
	var of outputFlags
	cmd := &cobra.Command{
		Use:     "merge [--zfile lz4|zstd] [--tar] LAYER... OUT",
		Short:   "Flatten a stack of layers (lowest first) into one committed layer",
		Example: "  obd layer merge --zfile lz4 base.tar app.tar flat.zfile",
		Args:    cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			wopts, err := of.writeOptions()
			if err != nil {
				return err
			}
			layers, upper, closeAll, err := openLayers(args[:len(args)-1])
			if err != nil {
				return err
			}
			defer closeAll()
			if upper != nil {
				layers = append(layers, upper)
			}
			return writeOutput(args[len(args)-1], func(out *os.File) error {
				return layerblob.Write(out, wopts, func(dst io.Writer) error {
					_, err := lsmt.Merge(layers, dst, of.commitOptions())
					return err
				})
			})
		},
	}
	of.register(cmd)
	return cmd
}
