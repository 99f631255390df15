package sandbox

import (
	"encoding/binary"
	"fmt"
	"slices"
	"sync"

	cseccomp "github.com/containerd/containerd/v2/contrib/seccomp"
	seccomp "github.com/elastic/go-seccomp-bpf"
	"github.com/elastic/go-seccomp-bpf/arch"
	"github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// Seccomp filters. The profiles are containerd's default (the one `nerdctl run` and `ctr run`
// give runc, Docker's lineage), computed for the capabilities each process holds, and
// compiled to BPF in Go (go-seccomp-bpf; no libseccomp):
//   - sandboxProfile (minus denied): cold sandboxes and compile, which hold no capability:
//     the default profile as for a container without capabilities (no mount, unshare, setns, ptrace,
//     keyctl, bpf, perf_event_open, clone of namespaces, ...; clone3 is ENOSYS so libc falls
//     back to clone);
//   - zygoteProfile: zygotes, which clone each sandbox into new PID, UTS and IPC namespaces
//     and chroot it: the same plus chroot (as for a container with CAP_SYS_CHROOT), clone with
//     exactly those namespace flags, sethostname, and unshare of a network namespace alone
//     (a function zygote's);
//   - forkedProfile: stacked by a sandbox forked from a zygote once it is set up, taking
//     those back (filters stack, the strictest answer wins), so a forked handler is held
//     to sandboxProfile too.

// denied are calls containerd's profile allows that no handler needs: ptrace (allowed there
// since Linux 4.8) and reading or writing another process's memory.
var denied = []string{"ptrace", "process_vm_readv", "process_vm_writev"}

// namespaceFlags are every clone flag that makes a namespace.
const namespaceFlags = unix.CLONE_NEWNS | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC | unix.CLONE_NEWUSER |
	unix.CLONE_NEWPID | unix.CLONE_NEWNET | unix.CLONE_NEWCGROUP

var (
	filtersOnce                      sync.Once
	sandboxBPF, zygoteBPF, forkedBPF []unix.SockFilter
	filtersErr                       error
)

// filters returns the compiled filters, built once.
func filters() (sandbox, zygote, forked []unix.SockFilter, err error) {
	filtersOnce.Do(func() {
		if sandboxBPF, filtersErr = compileProfile(defaultProfile(nil), 0); filtersErr != nil {
			return
		}
		zygote := defaultProfile([]string{"CAP_SYS_CHROOT"}, "sethostname")
		zygote.Syscalls = append(zygote.Syscalls, specs.LinuxSyscall{Names: []string{"unshare"}, Action: specs.ActAllow,
			Args: []specs.LinuxSeccompArg{{Index: 0, Value: unix.CLONE_NEWNET, Op: specs.OpEqualTo}}})
		if zygoteBPF, filtersErr = compileProfile(zygote, sandboxFlags); filtersErr != nil {
			return
		}
		forkedBPF, filtersErr = assemble(seccomp.Policy{
			DefaultAction: seccomp.ActionAllow,
			Syscalls: []seccomp.SyscallGroup{
				{Action: seccomp.ActionErrno, Names: []string{"chroot", "sethostname", "setdomainname", "unshare", "setns"}},
				{Action: seccomp.ActionErrno, NamesWithCondtions: []seccomp.NameWithConditions{{Name: "clone",
					Conditions: seccomp.ArgumentConditions{{Argument: 0, Operation: seccomp.BitsSet, Value: namespaceFlags}}}}},
			},
		})
	})
	return sandboxBPF, zygoteBPF, forkedBPF, filtersErr
}

// defaultProfile is containerd's default profile for a process with the given bounding
// capabilities, with the syscalls extra allowed.
func defaultProfile(caps []string, extra ...string) *specs.LinuxSeccomp {
	p := cseccomp.DefaultProfile(&specs.Spec{Process: &specs.Process{Capabilities: &specs.LinuxCapabilities{Bounding: caps}}})
	if len(extra) > 0 {
		p.Syscalls = append(p.Syscalls, specs.LinuxSyscall{Names: extra, Action: specs.ActAllow})
	}
	return p
}

// compileProfile compiles an OCI seccomp profile for this machine's architecture. cloneNS
// are namespace flags clone may carry after all (the profile allows clone only without any).
// A rule this compiler cannot express exactly is left out: the call stays denied, never
// allowed wider.
func compileProfile(p *specs.LinuxSeccomp, cloneNS uint64) ([]unix.SockFilter, error) {
	info, err := arch.GetInfo("")
	if err != nil {
		return nil, fmt.Errorf("sandbox: seccomp: %w", err)
	}
	action := func(r specs.LinuxSyscall) (seccomp.Action, bool) {
		switch r.Action {
		case specs.ActAllow:
			return seccomp.ActionAllow, true
		case specs.ActErrno:
			if r.ErrnoRet != nil {
				return seccomp.ActionErrno | seccomp.Action(*r.ErrnoRet), true
			}
			return seccomp.ActionErrno, true
		}
		return 0, false
	}
	if p.DefaultAction != specs.ActErrno || p.DefaultErrnoRet != nil {
		return nil, fmt.Errorf("sandbox: seccomp: default action %s not supported", p.DefaultAction)
	}
	pol := seccomp.Policy{DefaultAction: seccomp.ActionErrno}
	// Errno rules first: an allow rule for the same call must not win over them.
	var first, rest []seccomp.SyscallGroup
	for _, r := range p.Syscalls {
		act, ok := action(r)
		if !ok {
			continue
		}
		g := seccomp.SyscallGroup{Action: act}
		for _, name := range r.Names {
			if _, known := info.SyscallNames[name]; !known || slices.Contains(denied, name) {
				continue // another architecture's, newer than the table, or denied here
			}
			ns := uint64(0)
			if name == "clone" {
				ns = cloneNS
			}
			conds, ok := conditions(r.Args, ns)
			switch {
			case !ok:
			case len(conds) == 0:
				g.Names = append(g.Names, name)
			default:
				g.NamesWithCondtions = append(g.NamesWithCondtions, seccomp.NameWithConditions{Name: name, Conditions: conds})
			}
		}
		if act == seccomp.ActionAllow {
			rest = append(rest, g)
		} else {
			first = append(first, g)
		}
	}
	pol.Syscalls = append(first, rest...)
	return assemble(pol)
}

// conditions translates the argument checks of one OCI rule (all must hold). cloneNS widens
// a masked-equal-zero check on namespace flags (clone's) to let those flags through.
func conditions(args []specs.LinuxSeccompArg, cloneNS uint64) (seccomp.ArgumentConditions, bool) {
	var out seccomp.ArgumentConditions
	for _, a := range args {
		c := seccomp.Condition{Argument: uint32(a.Index), Value: a.Value, Operation: operations[a.Op]}
		switch {
		case a.Op == specs.OpMaskedEqual && a.ValueTwo == 0:
			c.Operation = seccomp.BitsNotSet
			if a.Value == namespaceFlags {
				c.Value &^= cloneNS
			}
		case c.Operation == "":
			return nil, false
		}
		out = append(out, c)
	}
	return out, true
}

// operations are the OCI comparisons with a go-seccomp-bpf equivalent (masked-equal only
// when comparing to zero, handled apart).
var operations = map[specs.LinuxSeccompOperator]seccomp.Operation{
	specs.OpEqualTo: seccomp.Equal, specs.OpNotEqual: seccomp.NotEqual,
	specs.OpLessThan: seccomp.LessThan, specs.OpLessEqual: seccomp.LessOrEqual,
	specs.OpGreaterThan: seccomp.GreaterThan, specs.OpGreaterEqual: seccomp.GreaterOrEqual,
}

func assemble(p seccomp.Policy) ([]unix.SockFilter, error) {
	insts, err := p.Assemble()
	if err != nil {
		return nil, fmt.Errorf("sandbox: seccomp: %w", err)
	}
	raw, err := bpf.Assemble(insts)
	if err != nil {
		return nil, fmt.Errorf("sandbox: seccomp: %w", err)
	}
	out := make([]unix.SockFilter, len(raw))
	for i, r := range raw {
		out[i] = unix.SockFilter{Code: r.Op, Jt: r.Jt, Jf: r.Jf, K: r.K}
	}
	return out, nil
}

// filterBytes is f as the bytes of a struct sock_filter array (for runner.py to install).
func filterBytes(f []unix.SockFilter) []byte {
	out := make([]byte, 0, 8*len(f))
	for _, s := range f {
		out = binary.NativeEndian.AppendUint16(out, s.Code)
		out = append(out, s.Jt, s.Jf)
		out = binary.NativeEndian.AppendUint32(out, s.K)
	}
	return out
}
