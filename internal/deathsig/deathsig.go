// Package deathsig starts child processes that ask for a death signal (SysProcAttr.Pdeathsig)
// from one OS thread that never exits. Linux sends that signal when the *thread* that forked
// the child exits, not the process, and a Go program retires threads: any goroutine that ends
// while locked to its thread takes the thread with it (convert's onOneCPU does so on purpose,
// to get fresh thread IDs). A child forked on such a thread would be killed long before the
// server that wants it to die with it. It is infrastructure below the sandbox and
// sandbox/once, outside the read path of docs/DESIGN.md.
package deathsig

import (
	"os/exec"
	"runtime"
	"sync"
)

var (
	once  sync.Once
	calls = make(chan func())
)

// Start runs cmd.Start on the package's thread, which is locked for the life of the process.
func Start(cmd *exec.Cmd) error {
	once.Do(func() {
		go func() {
			runtime.LockOSThread() // never unlocked: this thread must outlive every child
			for f := range calls {
				f()
			}
		}()
	})
	done := make(chan error, 1)
	calls <- func() { done <- cmd.Start() }
	return <-done
}
