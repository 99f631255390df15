package main

import (
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/obdproject/obd/layerblob"
	"github.com/obdproject/obd/quantity"
	"github.com/obdproject/obd/tarblob"
	"github.com/obdproject/obd/zfile"
)

func newZFileCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "zfile",
		Short: "Compress, decompress and inspect ZFile blobs",
	}
	cmd.AddCommand(newZFileCompressCmd(), newZFileDecompressCmd(), newZFileInfoCmd())
	return cmd
}

// zfileFlags are the compression knobs shared by `zfile compress` and `layer commit`.
type zfileFlags struct {
	algorithm string
	level     int
	blockSize string
}

// register adds the flags; algoFlag names the algorithm flag and defaultAlgo is its
// default ("" = no compression, for commands where compressing is optional).
func (f *zfileFlags) register(cmd *cobra.Command, algoFlag, defaultAlgo string) {
	usage := "compression algorithm: lz4 or zstd"
	if defaultAlgo == "" {
		usage = "compress the output with ZFile: lz4 or zstd (default: no compression)"
	}
	cmd.Flags().StringVar(&f.algorithm, algoFlag, defaultAlgo, usage)
	cmd.Flags().IntVar(&f.level, "level", 0, "zstd compression level (0 = default 3)")
	cmd.Flags().StringVar(&f.blockSize, "block-size", "4K", "uncompressed bytes per block: 4K, 8K, 16K, 32K or 64K")
}

func (f *zfileFlags) options() (zfile.Options, error) {
	algo, err := zfile.ParseAlgorithm(f.algorithm)
	if err != nil {
		return zfile.Options{}, err
	}
	bs, err := quantity.ParseSize(f.blockSize)
	if err != nil {
		return zfile.Options{}, fmt.Errorf("--block-size: %w", err)
	}
	return zfile.Options{Algorithm: algo, Level: f.level, BlockSize: int(bs)}, nil
}

func newZFileCompressCmd() *cobra.Command {
	var zf zfileFlags
	var tar bool
	cmd := &cobra.Command{
		Use:   "compress [--algorithm lz4|zstd] [--level N] [--block-size BYTES] [--tar] IN OUT",
		Short: "Compress a file into a ZFile (optionally wrapped in a layer tar)",
		Example: "  obd zfile compress --algorithm zstd --block-size 64K disk.lsmt disk.zfile\n" +
			"  obd zfile compress --tar layer.commit layer.tar",
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts, err := zf.options()
			if err != nil {
				return err
			}
			return copyWrapped(args[0], args[1], layerblob.WriteOptions{ZFile: &opts, Tar: tar})
		},
	}
	zf.register(cmd, "algorithm", "lz4")
	cmd.Flags().BoolVar(&tar, "tar", false, "wrap the ZFile in a tar holding one member "+tarblob.MemberName+" (the registry layer format)")
	return cmd
}

func newZFileDecompressCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "decompress IN OUT",
		Short:   "Decompress a ZFile (plain or tar-wrapped), verifying every block checksum",
		Example: "  obd zfile decompress layer.tar layer.lsmt",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			zr, closeIn, err := openZFile(args[0])
			if err != nil {
				return err
			}
			defer closeIn()
			return writeOutput(args[1], func(out *os.File) error {
				_, err := io.Copy(out, io.NewSectionReader(zr, 0, zr.Size()))
				return err
			})
		},
	}
}

func newZFileInfoCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "info FILE",
		Short:   "Show a ZFile's algorithm, block size, sizes and compression ratio",
		Example: "  obd zfile info layer.tar",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			zr, closeIn, err := openZFile(args[0])
			if err != nil {
				return err
			}
			defer closeIn()
			info := zr.Info()
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "algorithm:     %s\n", info.Algorithm)
			fmt.Fprintf(w, "block size:    %d\n", info.BlockSize)
			fmt.Fprintf(w, "blocks:        %d\n", info.Blocks)
			fmt.Fprintf(w, "original size: %d\n", info.OriginalSize)
			fmt.Fprintf(w, "stored size:   %d\n", info.StoredSize)
			if info.OriginalSize > 0 {
				fmt.Fprintf(w, "ratio:         %.3f (stored/original)\n", float64(info.StoredSize)/float64(info.OriginalSize))
			}
			fmt.Fprintf(w, "checksums:     %v\n", info.Verify)
			fmt.Fprintf(w, "flags:         header %#x, trailer %#x\n", info.HeaderFlags, info.TrailerFlags)
			return nil
		},
	}
}

// openZFile opens a ZFile on disk, unwrapping a layer tar first if there is one.
func openZFile(path string) (*zfile.Reader, func(), error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	var r io.ReaderAt = f
	size := st.Size()
	if tarblob.HasMagic(f) {
		sec, err := tarblob.Open(f, size)
		if err != nil {
			f.Close()
			return nil, nil, fmt.Errorf("%s: %w", path, err)
		}
		r, size = sec, sec.Size()
	}
	zr, err := zfile.Open(r, size, zfile.WithName(path))
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return zr, func() { f.Close() }, nil
}
