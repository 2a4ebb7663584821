/*!
The master observation on the CUDA backend (docs/env-spec.md §8): the `master_obs` kernel of
`kernels/master_obs.cu`, one thread per scenario, over the device state. The intents and the anchors
travel to the device and back with each call (N values each: the master observes once per decision,
not every step). The kernel's logic is checked against the CPU backend on the host by
`tests/master_obs.rs`.
*/

use cudarc::driver::{CudaSlice, DevicePtr, DeviceRepr, PushKernelArg, ValidAsZeroBits};

use super::{CudaBackend, drv, lazy_buf};
use crate::env::master_obs::{MASTER_INTENTS, MASTER_OBS, MasterAnchor, MasterObsArgs};
use crate::error::Result;

// SAFETY: `#[repr(C)]` `bytemuck::Pod` structs without padding, mirrored field for field by
// `MarlMasterAnchor` / `MasterObsArgs` in kernels/master_obs.cuh (sizes and offsets checked by
// tests/master_obs.rs, `master_obs_abi_matches`); all-zero bits are a valid anchor.
unsafe impl DeviceRepr for MasterAnchor {}
unsafe impl ValidAsZeroBits for MasterAnchor {}
unsafe impl DeviceRepr for MasterObsArgs {}

/// Device buffers of the master observation.
pub(super) struct MasterBufs {
    intents: Option<CudaSlice<f32>>,
    anchors: Option<CudaSlice<MasterAnchor>>,
    out: Option<CudaSlice<f32>>,
}

impl CudaBackend {
    /// Upload `intents` and `anchors`, run `master_obs`, read `out` and the updated anchors back.
    /// Sizes were checked by `VecEnv::master_obs`.
    pub(super) fn launch_master_obs(
        &mut self,
        intents: &[f32],
        anchors: &mut [MasterAnchor],
        out: &mut [f32],
    ) -> Result<()> {
        let n = self.layout.n_scenarios;
        let st = self.stream.clone();
        let bufs = self.master_bufs.get_or_insert(MasterBufs {
            intents: None,
            anchors: None,
            out: None,
        });
        let di = lazy_buf(&st, &mut bufs.intents, n * MASTER_INTENTS, "alloc intents")?;
        st.memcpy_htod(intents, di).map_err(drv("upload intents"))?;
        let da = lazy_buf(&st, &mut bufs.anchors, n, "alloc master anchors")?;
        st.memcpy_htod(anchors, da)
            .map_err(drv("upload master anchors"))?;
        let dout = lazy_buf(&st, &mut bufs.out, n * MASTER_OBS, "alloc master obs")?;
        let args = MasterObsArgs {
            p: self.layout.params,
            dm: self.dims,
            close: self.bufs.close,
            macro_series: self.bufs.macro_series,
            regime: self.bufs.regime,
            scen: self.bufs.scen,
            intents: di.device_ptr(&st).0,
            anchors: da.device_ptr(&st).0,
            out: dout.device_ptr(&st).0,
        };
        let cfg = self.rows_cfg(n, 1);
        let mut b = st.launch_builder(&self.k.master_obs);
        b.arg(&args);
        // SAFETY: `master_obs` (kernels/master_obs.cu) takes one `MasterObsArgs` by value (layout
        // checked by tests/master_obs.rs); intents hold N * MASTER_INTENTS floats, anchors N, out
        // N * MASTER_OBS; one thread per scenario, bounds-checked in the kernel.
        unsafe { b.launch(cfg) }.map_err(drv("master_obs launch"))?;
        let bufs = self.master_bufs.as_ref().expect("allocated above");
        let (da, dout) = (
            bufs.anchors.as_ref().expect("allocated above"),
            bufs.out.as_ref().expect("allocated above"),
        );
        st.memcpy_dtoh(dout, out).map_err(drv("read master obs"))?;
        st.memcpy_dtoh(da, anchors)
            .map_err(drv("read master anchors"))?;
        Ok(())
    }
}
