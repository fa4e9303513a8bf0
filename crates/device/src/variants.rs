//! Kernel choice: an op family's variants in order of preference ([`VariantTable`]), chosen for a
//! shape under the [`crate::KernelPolicy`] a [`Device`] handle carries.

use crate::device::Device;
use crate::error::{DeviceError, Result};
use crate::policy::{AdapterProfile, KernelPolicy};
use std::sync::Arc;

/// One kernel variant of an op family over shapes `S`, planning them as `P`: the plan is what
/// the family's one launcher runs (pipelines, grid, specialisation), so choosing and launching
/// cannot drift apart, and no code outside the table tells variants apart by name.
pub struct Variant<S: 'static, P: 'static = ()> {
    /// The name a [`KernelPolicy`] forces it by.
    pub name: &'static str,
    /// How this variant runs `S` on the device, where it runs it correctly within every limit of
    /// the device's profile; `Err` says why not.
    pub plan: fn(&Device, &S) -> std::result::Result<P, String>,
    /// Whether the automatic choice takes it (among those that can run the shape).
    pub prefers: fn(&Device, &S) -> bool,
}

/// A variant chosen for a shape, and its plan.
#[derive(Clone, Debug)]
pub struct Chosen<P> {
    /// The variant's name.
    pub variant: &'static str,
    /// How it runs the shape.
    pub plan: P,
}

/// An op family's variants, most preferred first.
pub struct VariantTable<S: 'static, P: 'static = ()> {
    /// The family name a [`KernelPolicy`] uses.
    pub family: &'static str,
    /// The variants.
    pub variants: &'static [Variant<S, P>],
}

impl<S, P> VariantTable<S, P> {
    /// The variant for `shape` on `dev` and its plan: the forced one where the device's policy
    /// forces this family (an error where it cannot run the shape), else the first that can and
    /// prefers it.
    pub fn choose(&self, dev: &Device, shape: &S) -> Result<Chosen<P>> {
        if let Some(name) = dev.policy().forced(self.family) {
            let v = self.get(name)?;
            return match (v.plan)(dev, shape) {
                Ok(plan) => Ok(Chosen {
                    variant: v.name,
                    plan,
                }),
                Err(reason) => Err(DeviceError::VariantUnsupported {
                    family: self.family,
                    variant: v.name,
                    reason,
                }),
            };
        }
        let mut reasons = Vec::new();
        for v in self.variants {
            match (v.plan)(dev, shape) {
                Ok(plan) if (v.prefers)(dev, shape) => {
                    return Ok(Chosen {
                        variant: v.name,
                        plan,
                    })
                }
                Ok(_) => reasons.push(format!("{}: not preferred", v.name)),
                Err(r) => reasons.push(format!("{}: {r}", v.name)),
            }
        }
        Err(DeviceError::NoVariant {
            family: self.family,
            adapter: dev.adapter_profile().name.clone(),
            reasons: reasons.join("; "),
        })
    }

    /// The plan of the variant called `name` for `shape`, whether or not the policy would choose
    /// it (tests, planners); `Err` naming why where it cannot run the shape.
    pub fn plan_of(&self, dev: &Device, name: &str, shape: &S) -> Result<P> {
        let v = self.get(name)?;
        (v.plan)(dev, shape).map_err(|reason| DeviceError::VariantUnsupported {
            family: self.family,
            variant: v.name,
            reason,
        })
    }

    /// The variant called `name`, or an error listing the family's variants.
    pub fn get(&self, name: &str) -> Result<&'static Variant<S, P>> {
        self.variants
            .iter()
            .find(|v| v.name == name)
            .ok_or_else(|| DeviceError::UnknownVariant {
                family: self.family.to_string(),
                variant: name.to_string(),
                known: self.names().collect::<Vec<_>>().join(", "),
            })
    }

    /// The variants' names, in order.
    pub fn names(&self) -> impl Iterator<Item = &'static str> {
        self.variants.iter().map(|v| v.name)
    }
}

impl Device {
    /// A handle to the same device (queue, pools, caches) that chooses kernels by `policy`;
    /// handles with different policies can run side by side, e.g. tests forcing variants.
    pub fn with_policy(&self, policy: KernelPolicy) -> Device {
        Device {
            inner: self.inner.clone(),
            policy: Arc::new(policy),
        }
    }

    /// This handle's kernel policy.
    pub fn policy(&self) -> &KernelPolicy {
        &self.policy
    }

    /// The adapter profile kernel choices are made for: the policy's, else the real adapter's.
    pub fn adapter_profile(&self) -> &AdapterProfile {
        self.policy.profile().unwrap_or(&self.inner.profile)
    }
}
