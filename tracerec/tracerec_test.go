package tracerec

import (
	"testing"
)

func TestQuote(t *testing.T) {
	got := quote([]string{"python3", "-c", "print('x')", "", "a=b/c"})
	if want := `python3 -c "print('x')" "" a=b/c`; got != want {
		t.Fatalf("quote = %s, want %s", got, want)
	}
}
