package sandbox_test

import (
	"context"
	"testing"

	"github.com/obdproject/obd/convert"
	"github.com/obdproject/obd/internal/testenv"
	"github.com/obdproject/obd/internal/testregistry"
	"github.com/obdproject/obd/sandbox"
	"github.com/obdproject/obd/sandbox/bddrootfs"
)

// The python image as an obd image in an in-process registry, converted and its start traced
// by `obd convert --record-trace`, served by a bdd that never read it.
func init() {
	sandbox.RegistryImage = func(b *testing.B) (sandbox.RootfsProvider, string) {
		reg := testregistry.Start(b, testregistry.Options{})
		ref := reg.Host + "/bench/python:obd"
		testenv.ConvertPythonImage(b, testenv.StartBDD(b), ref)
		resolvers, err := convert.RegistryOptions{}.Resolvers(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		bdd := testenv.StartBDD(b)
		return &bddrootfs.Provider{Client: bdd.Client, MountDir: b.TempDir(), Resolver: resolvers()}, ref
	}
}
