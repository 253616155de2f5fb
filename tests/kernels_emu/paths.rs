//! Alignment independence: each kernel's 16-byte pack path (aligned buffers) and its scalar
//! path (the same values one element off alignment) must give bit-identical results.
//! Neighbours: ../kernels_emu.rs (crate root), ops.rs (kernels vs f64 references), ffi.rs.

use super::ffi::{dims, raw, Buf, Elem, Rng, BLOCK};
use half::bf16;

/// The 16-byte pack path (aligned buffers) and the scalar path (the same values one element
/// off alignment) must give bit-identical results.
fn pack_and_scalar_paths_agree<T: Elem>(seed: u64) {
    let mut rng = Rng::new(seed);
    let len = 2048;
    let gate: Vec<T> = rng.vec(len, -4.0, 4.0);
    let up: Vec<T> = rng.vec(len, -2.0, 2.0);
    let shifted = |v: &[T]| {
        let mut s = vec![T::from_f32(0.0)];
        s.extend_from_slice(v);
        Buf::from(&s)
    };
    let d = dims(len.div_ceil(BLOCK as usize), BLOCK);
    let (ga, ua) = (Buf::from(&gate), Buf::from(&up));
    let mut oa = Buf::<T>::nan(len);
    (T::K.swiglu_forward)(d, oa.mp(), ga.cp(), ua.cp(), len).unwrap();
    let (gs, us) = (shifted(&gate), shifted(&up));
    let mut os = Buf::<T>::nan(len + 1);
    (T::K.swiglu_forward)(d, os.mp_at(1), gs.cp_at(1), us.cp_at(1), len).unwrap();
    let (a, b) = (oa.vals(), &os.vals()[1..]);
    assert_eq!(
        bytemuck::cast_slice::<T, u8>(a),
        bytemuck::cast_slice::<T, u8>(b),
        "swiglu_forward_{}",
        T::NAME
    );

    let (n, h) = (4usize, 512usize);
    // Row reductions take the same partition on both paths (rmsnorm.cu), so even rstd agrees.
    let x: Vec<T> = rng.vec(n * h, -2.0, 2.0);
    let w: Vec<T> = rng.vec(h, 0.5, 1.5);
    let (xa, wa, xs, ws) = (Buf::from(&x), Buf::from(&w), shifted(&x), shifted(&w));
    let (mut oa, mut os) = (Buf::<T>::nan(n * h), Buf::<T>::nan(n * h + 1));
    let (mut ra, mut rs) = (vec![f32::NAN; n], vec![f32::NAN; n]);
    (T::K.rmsnorm_forward)(
        dims(n, BLOCK),
        oa.mp(),
        ra.as_mut_ptr(),
        xa.cp(),
        wa.cp(),
        h as i32,
        1e-6,
    )
    .unwrap();
    (T::K.rmsnorm_forward)(
        dims(n, BLOCK),
        os.mp_at(1),
        rs.as_mut_ptr(),
        xs.cp_at(1),
        ws.cp_at(1),
        h as i32,
        1e-6,
    )
    .unwrap();
    assert_eq!(
        ra.iter().map(|r| r.to_bits()).collect::<Vec<_>>(),
        rs.iter().map(|r| r.to_bits()).collect::<Vec<_>>()
    );
    let (a, b) = (oa.vals(), &os.vals()[1..]);
    assert_eq!(
        bytemuck::cast_slice::<T, u8>(a),
        bytemuck::cast_slice::<T, u8>(b),
        "rmsnorm_forward_{}",
        T::NAME
    );
}

#[test]
fn pack_and_scalar_paths_are_bit_identical() {
    pack_and_scalar_paths_agree::<f32>(110);
    pack_and_scalar_paths_agree::<bf16>(111);
}

#[test]
fn rmsnorm_backward_pack_and_scalar_paths_are_bit_identical() {
    let mut rng = Rng::new(112);
    let (n, h) = (3usize, 768usize);
    let vals = |rng: &mut Rng, len: usize| -> Vec<bf16> { rng.vec(len, -1.0, 1.0) };
    let (x, w, g, dx) = (
        vals(&mut rng, n * h),
        vals(&mut rng, h),
        vals(&mut rng, n * h),
        vals(&mut rng, n * h),
    );
    let rstd: Vec<f32> = (0..n).map(|_| rng.uniform(0.5, 2.0)).collect();
    let shifted = |v: &[bf16]| {
        let mut s = vec![bf16::ZERO];
        s.extend_from_slice(v);
        Buf::from(&s)
    };
    let (xa, wa, ga, mut da) = (Buf::from(&x), Buf::from(&w), Buf::from(&g), Buf::from(&dx));
    let (xs, ws, gs, mut ds) = (shifted(&x), shifted(&w), shifted(&g), shifted(&dx));
    let d = dims(n, BLOCK);
    raw::emu_launch_rmsnorm_backward_bf16(
        d,
        da.mp(),
        ga.cp(),
        xa.cp(),
        wa.cp(),
        rstd.as_ptr(),
        h as i32,
    )
    .unwrap();
    let (dsp, gsp, xsp, wsp) = (ds.mp_at(1), gs.cp_at(1), xs.cp_at(1), ws.cp_at(1));
    raw::emu_launch_rmsnorm_backward_bf16(d, dsp, gsp, xsp, wsp, rstd.as_ptr(), h as i32).unwrap();
    let (a, b) = (da.vals(), &ds.vals()[1..]);
    assert_eq!(
        bytemuck::cast_slice::<bf16, u8>(a),
        bytemuck::cast_slice::<bf16, u8>(b)
    );
}
