//! Watching a run's parameters and optimizer state for NaN and infinities on the device: one
//! check dispatch per tensor, recorded after a step and read back with the loss in the
//! submissions that already run, so watching costs no extra synchronisation.

use crate::error::{Result, TrainError};
use kiln_device::ReadTicket;
use kiln_graph::{Device, Tensor};
use kiln_nn::{Module, Optimizer};
use kiln_ops::finite::{finite_check, CLEAR};
use kiln_ops::Buffer;

/// The tensors of a run that must stay finite, and their flag buffer.
pub struct FiniteWatch {
    names: Vec<String>,
    tensors: Vec<Tensor>,
    flags: Buffer,
}

impl FiniteWatch {
    /// The model's parameters and the optimizer's state.
    pub fn new(dev: &Device, model: &dyn Module, opt: &Optimizer) -> Result<FiniteWatch> {
        let params = model.named_parameters();
        let mut named = opt.labelled_state(&params);
        named.splice(0..0, params);
        let (names, tensors): (Vec<String>, Vec<Tensor>) = named.into_iter().unzip();
        let flags = dev.upload(&CLEAR.repeat(names.len().max(1)))?;
        Ok(FiniteWatch {
            names,
            tensors,
            flags,
        })
    }

    /// Records one check of every tensor (run with the next submission). The flags are sticky:
    /// once a tensor has held a non-finite value, its slot stays set.
    pub fn launch(&self, dev: &Device) -> Result<()> {
        for (slot, t) in self.tensors.iter().enumerate() {
            finite_check(dev, &t.array().buf, &self.flags, slot)?;
        }
        Ok(())
    }

    /// Queues a readback of the flags, carried by the next submission after its dispatches.
    pub fn read(&self, dev: &Device) -> Result<ReadTicket> {
        Ok(dev.read_async(&self.flags)?)
    }

    /// An error naming every tensor whose flags are set, `when` saying after what ("step 40",
    /// "loading").
    pub fn verdict(&self, flags: &[u32], when: &str) -> Result<()> {
        let bad: Vec<String> = self
            .names
            .iter()
            .zip(flags.chunks_exact(2))
            .zip(&self.tensors)
            .filter(|((_, f), _)| f[0] > 0)
            .map(|((name, f), t)| {
                format!(
                    "{name} has {} non-finite value{} of {} (the first at index {})",
                    f[0],
                    if f[0] == 1 { "" } else { "s" },
                    t.numel(),
                    f[1]
                )
            })
            .collect();
        if bad.is_empty() {
            return Ok(());
        }
        Err(TrainError::Training(format!(
            "non-finite values after {when}: {}",
            bad.join("; ")
        )))
    }

    /// Checks now and waits for the answer (once, before a run starts).
    pub fn check_now(&self, dev: &Device, when: &str) -> Result<()> {
        self.launch(dev)?;
        let t = self.read(dev)?;
        self.verdict(&t.wait::<u32>()?, when)
    }
}
