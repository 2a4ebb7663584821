/*!
Profiler annotations: NVTX ranges (NVIDIA Tools Extension) around the phases of the environment
and of training, so that an `nsys` timeline shows where host and device time goes
(`scripts/nsys-bench.sh`, docs/gpu.md "Profiling"). With the `nvtx` cargo feature each
[`range`] pushes a named NVTX range on the calling thread and pops it when the guard drops (the
`nvtx` crate: NVTX v3's C entry points built with `cc`, no CUDA toolkit needed; without a profiler
attached they are one branch each). Without the feature the functions compile to nothing.

Range names used (one phase each): `sample` (action sampling, host or device), `env step` (a batched
step), `observation` (building observations), `policy forward` (rollout inference), `update` (a PPO
update epoch loop), `transfer h2d` / `transfer d2h` (host<->device copies of the CUDA backend).
*/

/// Whether NVTX ranges are compiled in (the `nvtx` feature).
pub const NVTX: bool = cfg!(feature = "nvtx");

/// A named range on the current thread, closed when dropped (see the module docs).
#[must_use = "the range ends when this guard is dropped"]
#[derive(Debug)]
pub struct Range {
    _private: (),
}

/// Open a range called `name` on this thread until the returned guard drops.
#[inline]
pub fn range(name: &str) -> Range {
    #[cfg(feature = "nvtx")]
    nvtx::range_push!("{}", name);
    #[cfg(not(feature = "nvtx"))]
    let _ = name;
    Range { _private: () }
}

impl Drop for Range {
    #[inline]
    fn drop(&mut self) {
        #[cfg(feature = "nvtx")]
        nvtx::range_pop!();
    }
}

/// An instantaneous marker called `name`.
#[inline]
pub fn mark(name: &str) {
    #[cfg(feature = "nvtx")]
    nvtx::mark!("{}", name);
    #[cfg(not(feature = "nvtx"))]
    let _ = name;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_nest_and_close() {
        // With the feature this calls NVTX with no tool attached (a no-op that must not crash);
        // without it, nothing. Either way the guards nest and drop in order.
        let outer = range("outer");
        {
            let _inner = range("inner");
            mark("inside");
        }
        drop(outer);
        assert_eq!(NVTX, cfg!(feature = "nvtx"));
    }
}
