#![no_std]
// This file exists so that imds-guard's build script can depend on this crate (aya-build builds
// the `imds-guard-ebpf` bin target of this package for bpfel-unknown-none).
