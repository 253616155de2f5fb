//! `--device cuda` when CUDA cannot run: the command falls back to the CPU backend with one
//! line saying why, unless GRADIENTS_REQUIRE_GPU=1 (what scripts/gpu-check.sh sets), which
//! turns the fallback into an error, so a GPU check never compares the CPU with itself.
//! Runs the built binary; nothing is downloaded (the model path does not exist, so the
//! command stops at loading it once the device is settled).

use std::process::Command;

fn bench_on_cuda(require: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gradients"));
    cmd.args([
        "bench",
        "--model",
        "/nonexistent/model.gguf",
        "--device",
        "cuda",
    ]);
    cmd.env_remove("GRADIENTS_REQUIRE_GPU");
    if let Some(v) = require {
        cmd.env("GRADIENTS_REQUIRE_GPU", v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn a_required_gpu_that_cannot_run_is_an_error_not_a_fallback() {
    let (ok, err) = bench_on_cuda(None);
    assert!(!ok, "the model does not exist: {err}");
    if !err.contains("running on the CPU backend") {
        eprintln!("skipping: CUDA is usable here, so there is no fallback to refuse ({err})");
        return;
    }
    // without the variable: the fallback, then the missing model is the error
    assert!(err.contains("/nonexistent/model.gguf"), "{err}");
    // with it: the device is the error, before the model is read
    let (ok, err) = bench_on_cuda(Some("1"));
    assert!(!ok);
    assert!(err.contains("GRADIENTS_REQUIRE_GPU=1"), "{err}");
    assert!(!err.contains("/nonexistent/model.gguf"), "{err}");
    // any other value keeps the fallback
    let (_, err) = bench_on_cuda(Some("0"));
    assert!(err.contains("running on the CPU backend"), "{err}");
}
