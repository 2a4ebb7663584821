/*!
Execution costs: slippage (half-spread plus square-root market impact, capped), commission per side
and borrow fees on negative cash. These are the per-element formulas of docs/env-spec.md §4.5 and
§4.9; `kernels/env_logic.cuh` implements the same functions for the CUDA backend.

All inputs and outputs are fractions or currency amounts in `f64`.
*/

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Execution costs (docs/env-spec.md, "Fills").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CostConfig {
    /// Commission per side in basis points of traded notional (7.5 bps = 15 bps round trip).
    pub commission_bps: f64,
    /// Half the bid-ask spread in basis points, paid on every fill.
    pub half_spread_bps: f64,
    /// Square-root impact: slippage fraction += impact_coef * sqrt(order notional / bar dollar volume).
    pub impact_coef: f64,
    /// Cap on total slippage (spread + impact), in basis points.
    pub max_slippage_bps: f64,
    /// Annual rate charged on negative cash, accrued per bar.
    pub borrow_rate_annual: f64,
}

impl Default for CostConfig {
    fn default() -> Self {
        Self {
            commission_bps: 7.5,
            half_spread_bps: 1.0,
            impact_coef: 0.1,
            max_slippage_bps: 50.0,
            borrow_rate_annual: 0.05,
        }
    }
}

impl CostConfig {
    /// Every cost must be a finite number >= 0; an error names the field.
    pub fn validate(&self, origin: &str) -> Result<()> {
        for (name, v) in [
            ("costs.commission_bps", self.commission_bps),
            ("costs.half_spread_bps", self.half_spread_bps),
            ("costs.impact_coef", self.impact_coef),
            ("costs.max_slippage_bps", self.max_slippage_bps),
            ("costs.borrow_rate_annual", self.borrow_rate_annual),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::config_field(
                    origin,
                    name,
                    format!("must be a finite number >= 0, got {v}"),
                ));
            }
        }
        Ok(())
    }
}

/// Cost parameters in the units the step uses (fractions per fill, a rate per bar).
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct CostParams {
    /// Commission per side, fraction of fill notional.
    pub commission: f64,
    /// Half spread, fraction of price.
    pub half_spread: f64,
    /// Square-root impact coefficient.
    pub impact_coef: f64,
    /// Cap on the slippage fraction.
    pub max_slippage: f64,
    /// Borrow rate per bar on negative cash.
    pub borrow_per_bar: f64,
}

impl CostParams {
    /// The per-element parameters of `c` (basis points as fractions, the annual borrow rate per bar).
    pub fn new(c: &CostConfig, bars_per_year: f64) -> Self {
        Self {
            commission: c.commission_bps * 1e-4,
            half_spread: c.half_spread_bps * 1e-4,
            impact_coef: c.impact_coef,
            max_slippage: c.max_slippage_bps * 1e-4,
            borrow_per_bar: c.borrow_rate_annual / bars_per_year,
        }
    }
}

/// Slippage fraction of an order of notional `x` against a bar dollar volume `dv` (spec §4.5):
/// `min(half_spread + impact_coef * sqrt(x / max(dv, 1)), max_slippage)`.
#[inline(always)]
pub fn slippage(p: &CostParams, x: f64, dv: f64) -> f64 {
    let part = x / dv.max(1.0);
    (p.half_spread + p.impact_coef * part.sqrt()).min(p.max_slippage)
}

/// Borrow fee for one bar on a cash balance (spec §4.9): positive when cash is negative.
#[inline(always)]
pub fn borrow_fee(p: &CostParams, cash: f64) -> f64 {
    if cash < 0.0 {
        -cash * p.borrow_per_bar
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> CostParams {
        CostParams::new(&CostConfig::default(), 252.0 * 7.0)
    }

    #[test]
    fn round_trip_commission_is_15_bps() {
        let p = params();
        assert!((2.0 * p.commission - 0.0015).abs() < 1e-15);
    }

    #[test]
    fn slippage_grows_with_size_and_is_capped() {
        let p = params();
        let dv = 1e7;
        let small = slippage(&p, 1e3, dv);
        let big = slippage(&p, 1e6, dv);
        assert!(small < big);
        // hand value: 1 bp + 0.1 * sqrt(1e-4) = 1e-4 + 1e-3
        assert!((small - (1e-4 + 0.1 * (1e-4f64).sqrt())).abs() < 1e-15);
        assert_eq!(slippage(&p, 1e12, dv), p.max_slippage);
        // no volume: capped, never NaN
        assert_eq!(slippage(&p, 1e6, 0.0), p.max_slippage);
    }

    #[test]
    fn borrow_only_on_negative_cash() {
        let p = params();
        assert_eq!(borrow_fee(&p, 10.0), 0.0);
        let f = borrow_fee(&p, -1000.0);
        assert!((f - 1000.0 * 0.05 / 1764.0).abs() < 1e-12);
    }
}
