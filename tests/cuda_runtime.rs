//! Device choice and the CUDA runtime. Always: `Device` parsing (good and bad strings) and
//! `resolve`'s CPU fallback with its one-line reason (with or without the `cuda` feature).
//! With `--features cuda`: runtime creation is an error (never a panic) naming what is
//! missing on a machine without a GPU; and on a GPU machine the runtime opens GPU 0, loads the
//! fatbin, round-trips buffers and runs `cast` and `rmsnorm_forward` against the CPU backend.
//! The GPU tests print why they skip when no GPU is usable; set GRADIENTS_REQUIRE_GPU=1 to make
//! that a failure instead (for runs on a GPU machine).
//! Run: `cargo test --test cuda_runtime` and `cargo test --features cuda --test cuda_runtime`.

use gradients_engine::backend::device::{resolve, Device};

#[test]
fn parses_good_device_strings() {
    let cases = [
        ("cpu", Device::Cpu),
        ("CPU", Device::Cpu),
        (" cpu\n", Device::Cpu),
        ("cuda", Device::Cuda(0)),
        ("cuda:0", Device::Cuda(0)),
        ("cuda:3", Device::Cuda(3)),
        ("Cuda:12", Device::Cuda(12)),
    ];
    for (s, want) in cases {
        assert_eq!(s.parse::<Device>().unwrap(), want, "{s:?}");
    }
    for d in [Device::Cpu, Device::Cuda(0), Device::Cuda(5)] {
        assert_eq!(d.to_string().parse::<Device>().unwrap(), d);
    }
}

#[test]
fn rejects_bad_device_strings() {
    let cases = [
        ("", "unknown device"),
        ("gpu", "unknown device"),
        ("cuda0", "unknown device"),
        ("cpu:0", "unknown device"),
        ("cuda:", "missing GPU index"),
        ("cuda:x", "not a non-negative integer"),
        ("cuda:-1", "not a non-negative integer"),
        ("cuda:+1", "not a non-negative integer"),
        ("cuda:1:2", "not a non-negative integer"),
        ("cuda:99999999999999999999999", "out of range"),
    ];
    for (s, why) in cases {
        let e = s.parse::<Device>().unwrap_err().to_string();
        assert!(e.contains(&format!("device `{s}`")), "{s:?}: {e}");
        assert!(e.contains(why), "{s:?}: {e}");
        assert!(
            e.contains("expected `cpu`, `cuda` or `cuda:N`"),
            "{s:?}: {e}"
        );
    }
}

#[test]
fn resolve_keeps_cpu() {
    assert_eq!(resolve(Device::Cpu), (Device::Cpu, None));
}

/// Checks a fallback: CPU, and one line "cuda:N requested but ...; running on the CPU backend".
fn assert_fallback(requested: Device) -> String {
    let (dev, msg) = resolve(requested);
    assert_eq!(dev, Device::Cpu, "{msg:?}");
    let msg = msg.expect("a fallback says why");
    assert!(
        msg.starts_with(&format!("{requested} requested but ")),
        "{msg}"
    );
    assert!(msg.ends_with("; running on the CPU backend"), "{msg}");
    assert!(!msg.contains('\n'), "one line: {msg}");
    msg
}

#[test]
fn resolve_falls_back_for_a_gpu_no_machine_has() {
    // Without the feature: no CUDA support; with it: no driver here, or GPU 4096 absent on a
    // GPU machine. Either way a fallback.
    let msg = assert_fallback(Device::Cuda(4096));
    assert!(msg.len() > "cuda:4096 requested but ; running on the CPU backend".len());
}

#[cfg(not(feature = "cuda"))]
#[test]
fn resolve_without_the_feature_falls_back() {
    let msg = assert_fallback(Device::Cuda(0));
    assert!(msg.contains("no CUDA support"), "{msg}");
    assert!(msg.contains("--features cuda"), "{msg}");
}

#[cfg(feature = "cuda")]
#[path = "cuda_runtime/gpu.rs"]
mod gpu;

#[cfg(feature = "cuda")]
mod common;
