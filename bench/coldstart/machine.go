package coldstart

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strings"
	"syscall"
)

// DescribeMachine returns a one-line description of this machine for the report: CPU model and
// count, memory, kernel and OS.
func DescribeMachine() string {
	cpu := firstField("/proc/cpuinfo", "model name")
	if cpu == "" {
		cpu = runtime.GOARCH
	}
	mem := firstField("/proc/meminfo", "MemTotal")
	var kb int64
	if _, err := fmt.Sscanf(mem, "%d kB", &kb); err == nil {
		mem = fmt.Sprintf("%.0f GiB RAM", float64(kb)/(1<<20))
	}
	osName := strings.Trim(firstKeyValue("/etc/os-release", "PRETTY_NAME"), `"`)
	var uts syscall.Utsname
	kernel := ""
	if err := syscall.Uname(&uts); err == nil {
		kernel = "Linux " + utsString(uts.Release[:])
	}
	parts := []string{fmt.Sprintf("%d × %s", runtime.NumCPU(), cpu), mem, kernel, osName, runtime.Version()}
	var kept []string
	for _, p := range parts {
		if p != "" {
			kept = append(kept, p)
		}
	}
	return strings.Join(kept, ", ")
}

// LoadAverage returns the 1, 5 and 15 minute load averages of /proc/loadavg ("1.02 0.87 0.55"),
// "" when they cannot be read. Other work on the machine slows every cell, some more than
// others: the report says how loaded the machine was.
func LoadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	fields := strings.Fields(string(data))
	if len(fields) < 3 {
		return ""
	}
	return strings.Join(fields[:3], " ")
}

// firstField returns the value of the first "key : value" line of a /proc file.
func firstField(path, key string) string {
	return scanLines(path, func(line string) (string, bool) {
		k, v, ok := strings.Cut(line, ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v), true
		}
		return "", false
	})
}

// firstKeyValue returns the value of the first KEY=value line of a file.
func firstKeyValue(path, key string) string {
	return scanLines(path, func(line string) (string, bool) {
		k, v, ok := strings.Cut(line, "=")
		if ok && k == key {
			return v, true
		}
		return "", false
	})
}

func scanLines(path string, match func(string) (string, bool)) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := match(s.Text()); ok {
			return v
		}
	}
	return ""
}

func utsString(field []int8) string {
	b := make([]byte, 0, len(field))
	for _, c := range field {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	return string(b)
}
