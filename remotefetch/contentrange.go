package remotefetch

import (
	"fmt"
	"strconv"
	"strings"
)

// parseContentRange parses "bytes first-last/total" (total may be "*", returned as -1).
func parseContentRange(s string) (first, last, total int64, err error) {
	rest, ok := strings.CutPrefix(s, "bytes ")
	if !ok {
		return 0, 0, 0, fmt.Errorf("%w: Content-Range %q: not a byte range", ErrBadResponse, s)
	}
	span, size, ok := strings.Cut(rest, "/")
	if !ok {
		return 0, 0, 0, fmt.Errorf("%w: Content-Range %q: no total", ErrBadResponse, s)
	}
	a, b, ok := strings.Cut(span, "-")
	if !ok {
		return 0, 0, 0, fmt.Errorf("%w: Content-Range %q: no span", ErrBadResponse, s)
	}
	first, err1 := strconv.ParseInt(a, 10, 64)
	last, err2 := strconv.ParseInt(b, 10, 64)
	total = -1
	var err3 error
	if size != "*" {
		total, err3 = strconv.ParseInt(size, 10, 64)
	}
	if err1 != nil || err2 != nil || err3 != nil || first < 0 || last < first || (total >= 0 && last >= total) {
		return 0, 0, 0, fmt.Errorf("%w: Content-Range %q: malformed", ErrBadResponse, s)
	}
	return first, last, total, nil
}
