//! Build script: compiles the CUDA kernels when the `cuda` feature is on (see kernels/).
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
}
