// Package bddv1 is the generated protobuf and gRPC code of bdd's control API
// (bdd.proto). It sits beside the read path of docs/DESIGN.md: clients use it to ask bdd
// to build a stack of layers and expose it as a block device. Regenerate with
// `make proto`.
package bddv1
