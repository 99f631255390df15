package convert

import "testing"

func TestParseLocation(t *testing.T) {
	for in, want := range map[string]Location{
		"oci:/tmp/img":             {Dir: "/tmp/img"},
		"oci:/tmp/img:v1":          {Dir: "/tmp/img", Tag: "v1"},
		"busybox":                  {Ref: "docker.io/library/busybox:latest"},
		"127.0.0.1:5000/a/b:c":     {Ref: "127.0.0.1:5000/a/b:c"},
		"registry.example.com/x:y": {Ref: "registry.example.com/x:y"},
	} {
		got, err := ParseLocation(in)
		if err != nil || got != want {
			t.Errorf("ParseLocation(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, bad := range []string{"oci:", "oci::tag", "bad ref!", "a//b", ""} {
		if _, err := ParseLocation(bad); err == nil {
			t.Errorf("ParseLocation(%q) accepted", bad)
		}
	}
}
