// Package fleet measures, on one machine, the figures the fleet model (package fleetsim) runs
// on: one node's start against a far origin registry, straight, through a near zone mirror
// (a real distribution pull-through cache, internal/testzone) cold and warm, through a
// mirror warmed on the manifest GET (package mirrorwarm), and from IPFS peers (kubo) once a
// canary node holds the image. The harness runs only when asked
// (`go test ./bench/fleet -run TestFirstStart -fleet`, a few minutes) and writes
// firststart.json, which `obd fleet-sim` reads.
package fleet
