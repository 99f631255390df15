package convert

import (
	"io"
	"log/slog"
	"os"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/sys/unix"
)

// progress reports per-layer byte counts: bars on a terminal, log lines
// otherwise.
type progress struct {
	bars *mpb.Progress // nil: log lines
	log  *slog.Logger
}

// newProgress draws bars on out when it is a terminal; log lines then go
// through the bars (printed above them) instead of to log, which would tear
// them.
func newProgress(out *os.File, log *slog.Logger) *progress {
	p := &progress{log: log}
	if out != nil {
		if _, err := unix.IoctlGetTermios(int(out.Fd()), unix.TCGETS); err == nil {
			p.bars = mpb.New(mpb.WithOutput(out), mpb.WithWidth(40))
			p.log = slog.New(slog.NewTextHandler(p.bars, nil))
		}
	}
	return p
}

// track wraps r, counting total bytes under label ("apply sha256:ab12..",
// "push sha256:cd34.."). The returned func ends the bar or logs the total.
func (p *progress) track(r io.Reader, label string, total int64) (io.Reader, func()) {
	if p.bars == nil {
		p.log.Info(label, "bytes", total)
		return r, func() {}
	}
	bar := p.bars.AddBar(total,
		mpb.PrependDecorators(decor.Name(label, decor.WC{W: len(label) + 1, C: decor.DindentRight})),
		mpb.AppendDecorators(decor.CountersKibiByte("% .1f / % .1f")))
	return bar.ProxyReader(r), func() { bar.SetTotal(-1, true) }
}

// wait flushes the bars.
func (p *progress) wait() {
	if p.bars != nil {
		p.bars.Wait()
	}
}
