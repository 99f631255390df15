package deathsig

import (
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
)

// retireThreads ends n goroutines locked to their threads, one after another, so the runtime
// retires about every thread the process had idle.
func retireThreads(n int) {
	for range n {
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
		}()
		wg.Wait()
	}
}

// TestChildOutlivesRetiredThreads: a child with Pdeathsig started through Start survives the
// runtime retiring threads; one started with a plain cmd.Start (the control) is killed when
// its forking thread goes, which shows the retirement reaches it.
func TestChildOutlivesRetiredThreads(t *testing.T) {
	start := func(through bool) *exec.Cmd {
		cmd := exec.Command("sleep", "30")
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		var err error
		if through {
			err = Start(cmd)
		} else {
			err = cmd.Start()
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd
	}
	ours, control := start(true), start(false)
	// Whether a child has exited (a killed one is a zombie until waited for).
	alive := func(cmd *exec.Cmd) bool {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(cmd.Process.Pid, &ws, syscall.WNOHANG, nil)
		return err == nil && pid == 0
	}
	for i := 0; i < 5 && alive(control); i++ {
		retireThreads(200)
		time.Sleep(100 * time.Millisecond) // the signal is delivered asynchronously
	}
	if alive(control) {
		t.Log("the control child survived: its forking thread was not retired, so this run shows less")
	}
	if !alive(ours) {
		t.Fatal("a child started through Start was killed when threads were retired")
	}
}
