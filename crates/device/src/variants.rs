//! Kernel choice: an op family's variants in order of preference ([`VariantTable`]), chosen for a
//! shape under the [`crate::KernelPolicy`] a [`Device`] handle carries.

use crate::device::Device;
use crate::error::{DeviceError, Result};
use crate::policy::{AdapterProfile, KernelPolicy};
use std::sync::Arc;

/// One kernel variant of an op family over shapes `S`.
pub struct Variant<S: 'static> {
    /// The name a [`KernelPolicy`] forces it by.
    pub name: &'static str,
    /// `Ok` where it runs `S` correctly within every limit of the device's profile; `Err`
    /// says why not.
    pub supports: fn(&Device, &S) -> std::result::Result<(), String>,
    /// Whether the automatic choice takes it (among those that support the shape).
    pub prefers: fn(&Device, &S) -> bool,
}

/// An op family's variants, most preferred first.
pub struct VariantTable<S: 'static> {
    /// The family name a [`KernelPolicy`] uses.
    pub family: &'static str,
    /// The variants.
    pub variants: &'static [Variant<S>],
}

impl<S> VariantTable<S> {
    /// The variant for `shape` on `dev`: the forced one where the device's policy forces this
    /// family (an error where it does not support the shape), else the first that supports
    /// and prefers it.
    pub fn choose(&self, dev: &Device, shape: &S) -> Result<&'static Variant<S>> {
        if let Some(name) = dev.policy().forced(self.family) {
            let v = self.get(name)?;
            return match (v.supports)(dev, shape) {
                Ok(()) => Ok(v),
                Err(reason) => Err(DeviceError::VariantUnsupported {
                    family: self.family,
                    variant: v.name,
                    reason,
                }),
            };
        }
        let mut reasons = Vec::new();
        for v in self.variants {
            match (v.supports)(dev, shape) {
                Ok(()) if (v.prefers)(dev, shape) => return Ok(v),
                Ok(()) => reasons.push(format!("{}: not preferred", v.name)),
                Err(r) => reasons.push(format!("{}: {r}", v.name)),
            }
        }
        Err(DeviceError::NoVariant {
            family: self.family,
            adapter: dev.adapter_profile().name.clone(),
            reasons: reasons.join("; "),
        })
    }

    /// The variant called `name`, or an error listing the family's variants.
    pub fn get(&self, name: &str) -> Result<&'static Variant<S>> {
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
