package trace

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"

	"gonum.org/v1/gonum/stat/distuv"
)

// Pattern is an arrival pattern of the synthetic generator.
type Pattern int

const (
	// Periodic functions fire every P minutes (timers): P from 1 minute to 2 hours, with a
	// random phase and occasional one-minute jitter.
	Periodic Pattern = iota
	// Poisson functions are invoked at a constant random rate, from a few a day to a few a
	// minute.
	Poisson
	// Bursty functions stay silent for long stretches, then receive a burst of many
	// invocations over a few minutes.
	Bursty
	// Rare functions are invoked a handful of times a day at random minutes.
	Rare
	patterns
)

var patternNames = [...]string{"periodic", "poisson", "bursty", "rare"}

func (p Pattern) String() string {
	if p < 0 || p >= patterns {
		return fmt.Sprintf("pattern(%d)", int(p))
	}
	return patternNames[p]
}

// ParseMix parses a mix written PATTERN=COUNT,... (e.g. "periodic=300,poisson=700").
func ParseMix(s string) (map[Pattern]int, error) {
	mix := make(map[Pattern]int)
	for item := range strings.SplitSeq(s, ",") {
		name, count, ok := strings.Cut(strings.TrimSpace(item), "=")
		n, err := strconv.Atoi(count)
		if !ok || err != nil || n < 0 {
			return nil, fmt.Errorf("trace: mix item %q is not PATTERN=COUNT", item)
		}
		i := slices.Index(patternNames[:], name)
		if i < 0 {
			return nil, fmt.Errorf("trace: unknown arrival pattern %q (want periodic, poisson, bursty or rare)", name)
		}
		mix[Pattern(i)] += n
	}
	return mix, nil
}

// GenerateConfig describes a synthetic trace.
type GenerateConfig struct {
	Seed    uint64
	Minutes int             // default 1440 (one day)
	Mix     map[Pattern]int // functions per pattern; default DefaultMix scaled to 1000
}

// DefaultMix is a mix shaped like the public dataset's: many timers and steady HTTP functions,
// a share of bursty queue/event functions and a long tail of rarely invoked ones.
func DefaultMix(functions int) map[Pattern]int {
	shares := [patterns]float64{Periodic: 0.30, Poisson: 0.35, Bursty: 0.15, Rare: 0.20}
	mix := make(map[Pattern]int)
	left := functions
	for p := Periodic; p < patterns-1; p++ {
		mix[p] = int(math.Round(shares[p] * float64(functions)))
		left -= mix[p]
	}
	mix[patterns-1] = max(left, 0)
	return mix
}

// Generate writes a synthetic trace: per-minute invocations of each function with the given
// patterns, durations and memory drawn from log-normal distributions, and packages (a runtime
// plus popular libraries shared within an application). The same config gives the same trace.
func Generate(cfg GenerateConfig) (*Trace, error) {
	if cfg.Minutes == 0 {
		cfg.Minutes = 1440
	}
	if cfg.Mix == nil {
		cfg.Mix = DefaultMix(1000)
	}
	if cfg.Minutes < 0 || cfg.Minutes > 1<<20 {
		return nil, fmt.Errorf("trace: %d minutes is out of range", cfg.Minutes)
	}
	g := generator{rng: rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15)), minutes: cfg.Minutes}
	t := &Trace{Minutes: cfg.Minutes, Packages: make(map[FunctionKey][]string)}
	var app AppKey
	var appPackages []string
	left := 0 // functions still to place in the current app
	for p := Periodic; p < patterns; p++ {
		n := cfg.Mix[p]
		if n < 0 {
			return nil, fmt.Errorf("trace: negative function count %d for %s", n, p)
		}
		for range n {
			if left == 0 {
				app, appPackages, left = g.newApp(t)
			}
			left--
			key := FunctionKey{app.Owner, app.App, g.hash()}
			counts, trigger := g.arrivals(p)
			t.Invocations = append(t.Invocations, Invocations{FunctionKey: key, Trigger: trigger, Counts: counts})
			t.Durations = append(t.Durations, g.durations(key, counts))
			t.Packages[key] = g.functionPackages(appPackages)
		}
	}
	return t, nil
}

type generator struct {
	rng     *rand.Rand
	minutes int
}

// hash returns a random 64-hex-digit name, like the dataset's SHA-256 hashes.
func (g *generator) hash() string {
	var seed [16]byte
	for i := range seed {
		seed[i] = byte(g.rng.Uint32())
	}
	sum := sha256.Sum256(seed[:])
	return hex.EncodeToString(sum[:])
}

var (
	runtimes  = []string{"python3.12", "node20", "dotnet8", "java21"}
	libraries = []string{"requests", "numpy", "pandas", "boto3", "pillow", "scipy", "sklearn", "torch", "flask", "lodash", "express", "axios"}
)

// newApp starts an application of 1–4 functions with its memory row and base packages.
func (g *generator) newApp(t *Trace) (AppKey, []string, int) {
	app := AppKey{g.hash(), g.hash()}
	median := math.Exp(math.Log(150) + 0.6*g.rng.NormFloat64()) // MB, centred on 150
	median = min(max(median, 64), 2048)
	m := AppMemory{AppKey: app, SampleCount: 1 + g.rng.IntN(1000), AverageMB: median * 1.05}
	for i, p := range MemoryPercentiles {
		m.Percentiles[i] = math.Round(median * (0.8 + 0.4*p/100))
	}
	t.Memory = append(t.Memory, m)
	pkgs := []string{runtimes[g.zipf(len(runtimes))]}
	for range g.rng.IntN(3) {
		pkgs = append(pkgs, libraries[g.zipf(len(libraries))])
	}
	return app, pkgs, 1 + g.rng.IntN(4)
}

// functionPackages is the app's packages plus, half the time, one more library.
func (g *generator) functionPackages(app []string) []string {
	pkgs := slices.Clone(app)
	if g.rng.IntN(2) == 0 {
		pkgs = append(pkgs, libraries[g.zipf(len(libraries))])
	}
	slices.Sort(pkgs)
	return slices.Compact(pkgs)
}

// zipf picks an index in [0, n) with probability falling as 1/(i+1).
func (g *generator) zipf(n int) int {
	total := 0.0
	for i := range n {
		total += 1 / float64(i+1)
	}
	x := g.rng.Float64() * total
	for i := range n {
		x -= 1 / float64(i+1)
		if x < 0 {
			return i
		}
	}
	return n - 1
}

// arrivals draws the per-minute counts of one function of pattern p, and its trigger.
func (g *generator) arrivals(p Pattern) ([]int, string) {
	counts := make([]int, g.minutes)
	switch p {
	case Periodic:
		periods := []int{1, 2, 5, 10, 15, 15, 20, 30, 30, 60, 60, 120}
		period := periods[g.rng.IntN(len(periods))]
		for m := g.rng.IntN(period); m < g.minutes; m += period {
			at := m
			if g.rng.IntN(10) == 0 { // a late or early timer
				at = min(max(m+g.rng.IntN(3)-1, 0), g.minutes-1)
			}
			counts[at]++
		}
		return counts, "timer"
	case Poisson:
		rate := math.Exp(math.Log(0.002) + g.rng.Float64()*(math.Log(5)-math.Log(0.002)))
		for m := range counts {
			counts[m] = g.poisson(rate)
		}
		return counts, "http"
	case Bursty:
		meanOff := 60 + g.rng.Float64()*180
		for m := int(g.rng.ExpFloat64() * meanOff); m < g.minutes; {
			length, rate := 2+g.rng.IntN(14), 1+g.rng.Float64()*19
			for i := m; i < min(m+length, g.minutes); i++ {
				counts[i] = g.poisson(rate)
			}
			m += length + 1 + int(g.rng.ExpFloat64()*meanOff)
		}
		return counts, "queue"
	default: // Rare
		for range 1 + g.rng.IntN(6) {
			counts[g.rng.IntN(g.minutes)]++
		}
		return counts, "http"
	}
}

// poisson draws a Poisson count with mean lambda (Knuth's method; lambda is small here).
func (g *generator) poisson(lambda float64) int {
	limit, k, p := math.Exp(-lambda), 0, g.rng.Float64()
	for p > limit {
		k++
		p *= g.rng.Float64()
	}
	return k
}

// durations draws a log-normal execution time distribution (median 50 ms to 10 s) and
// records its percentiles, with Count the function's total invocations.
func (g *generator) durations(key FunctionKey, counts []int) Durations {
	median := math.Exp(math.Log(50) + g.rng.Float64()*(math.Log(10000)-math.Log(50)))
	sigma := 0.3 + g.rng.Float64()*0.9
	quantile := func(p float64) float64 {
		p = min(max(p, 0.001), 0.999) // the 0th and 100th percentiles of a sample, not of ∞
		return math.Round(median * math.Exp(sigma*distuv.UnitNormal.Quantile(p)))
	}
	d := Durations{FunctionKey: key, Average: math.Round(median * math.Exp(sigma*sigma/2))}
	for _, c := range counts {
		d.Count += c
	}
	for i, p := range DurationPercentiles {
		d.Percentiles[i] = quantile(p / 100)
	}
	d.Minimum, d.Maximum = d.Percentiles[0], d.Percentiles[len(d.Percentiles)-1]
	return d
}
