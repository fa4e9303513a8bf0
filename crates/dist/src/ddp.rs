//! Data-parallel training with PyTorch's DistributedDataParallel semantics, over recorded steps.
//!
//! Every process holds the whole model and trains on its share of each batch. At the start the
//! parameters, generator offsets and optimizer state are broadcast from rank 0, so every process
//! begins identical. Each step, after backward, the gradients are combined (a weighted sum: each
//! process's mean gradient times its share of the batch, so the result is the mean over the
//! whole batch), and every process applies the same optimizer update to the same values; the
//! processes therefore stay identical without exchanging parameters again.
//!
//! A step is recorded once per local batch size and replayed, as in `kiln_train::fit`, but cut in
//! pieces: the gradients go to the all-reduce in buckets of about [`DdpConfig::bucket_bytes`], in
//! the order backward finishes them (the last layer's first), and the recording is cut where a
//! bucket's last gradient is final (see `Tensor::backward_with`). A replay submits the pieces one
//! after another, each followed by copies of its bucket's gradients to the host, so the host
//! receives a bucket, starts its non-blocking all-reduce (`MPI_Iallreduce`) and uploads the result
//! while the device still computes the rest of backward. The optimizer's update is a plan of its
//! own, replayed once every bucket is back.
//!
//! Gradient accumulation: [`DistributedDataParallel::no_sync`] runs a micro-batch's forward and
//! backward and adds its gradients into a local accumulator without communicating (PyTorch's
//! `no_sync`); the next [`DistributedDataParallel::step`] adds the accumulator into what it sends.

use crate::comm::{Backoff, Dist};
use crate::{DistError, Result};
use kiln_device::{Plan, ReadTicket};
use kiln_graph::{Array, Device, Tensor};
use kiln_nn::{Module, Optimizer};
use kiln_train::parallel::{DataParallel, Share};
use mpi::collective::SystemOperation;
use mpi::traits::*;
use std::collections::VecDeque;
use std::time::Instant;

/// Settings of [`DistributedDataParallel`].
#[derive(Clone, Debug)]
pub struct DdpConfig {
    /// Gradient bytes per all-reduce; PyTorch's default `bucket_cap_mb=25` (25 MiB). Smaller
    /// buckets start communicating earlier in backward, at the cost of more messages.
    pub bucket_bytes: usize,
}

impl Default for DdpConfig {
    fn default() -> Self {
        DdpConfig {
            bucket_bytes: 25 << 20,
        }
    }
}

/// Where the time of the synchronised steps went, as the host saw it (the first run of each
/// recorded step, which also records, is not counted).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepTimes {
    /// Steps counted.
    pub steps: u64,
    /// Seconds from a step's first submission to its update's submission.
    pub total: f64,
    /// Of which submitting the step's pieces and its update. On a GPU this is encoding alone;
    /// a software adapter (lavapipe) may run much of the work inside the submission.
    pub submit: f64,
    /// Of which waiting for the device to finish a bucket's part of forward and backward (and
    /// the previous step's update, which runs first).
    pub compute: f64,
    /// Of which host copies: reading a bucket's gradients from the mapped copy, weighting them
    /// into the send buffer, and uploading the combined values.
    pub copies: f64,
    /// Of which waiting for all-reduces once every bucket was on its way.
    pub allreduce: f64,
    /// Gradient bytes all-reduced (each process's payload: f32 gradients and the loss).
    pub bytes: u64,
}

/// Gradients combined in one all-reduce.
#[derive(Clone, Debug, Default)]
struct Bucket {
    /// Indices into the optimizer's parameters, in the order backward finishes them.
    params: Vec<usize>,
    /// Gradient elements (bucket 0 carries the loss after them).
    len: usize,
}

/// A step recorded for one local batch size.
struct Recorded {
    /// Piece k ends where bucket k's last gradient is final; piece 0 holds the forward pass.
    pieces: Vec<Plan>,
    /// Whatever backward records after the last bucket is complete (usually nothing).
    tail: Plan,
    /// Each parameter's gradient as this step's backward writes it (None: no gradient).
    grads: Vec<Option<Array>>,
    loss: Tensor,
    /// Skip the update on the device when the combined loss is not finite.
    guard: bool,
    /// Recorded and not run yet: its dispatches are pending, so its first run replays nothing.
    fresh: bool,
    /// The optimizer's update, recorded at the step's first synchronisation.
    update: Option<Plan>,
    /// accumulator += gradients (no_sync), recorded on first use.
    accumulate: Option<Plan>,
    /// Per bucket: gradients += accumulator, accumulator = 0; recorded on first use.
    merges: Vec<Option<Plan>>,
}

/// One process's side of data-parallel training (see the module's doc).
pub struct DistributedDataParallel<'a> {
    dist: &'a Dist,
    dev: Device,
    cfg: DdpConfig,
    /// The optimizer's parameters, as at the first recording.
    params: Vec<Tensor>,
    /// Fixed by the first recording (the same in every process: checked then).
    buckets: Vec<Bucket>,
    steps: Vec<Recorded>,
    /// Per parameter with a gradient: the no_sync accumulator.
    accum: Vec<Option<Array>>,
    /// no_sync runs since the last synchronisation.
    micro: usize,
    /// Per bucket: what this process sends and what comes back.
    host: Vec<(Vec<f32>, Vec<f32>)>,
    times: StepTimes,
}

impl<'a> DistributedDataParallel<'a> {
    /// Data parallelism over `dist`'s processes on `dev`. Call [`Self::broadcast`] before
    /// training (distributed `fit` and `train_lm_parallel` do).
    pub fn new(dist: &'a Dist, dev: &Device, cfg: DdpConfig) -> Self {
        DistributedDataParallel {
            dist,
            dev: dev.clone(),
            cfg,
            params: Vec::new(),
            buckets: Vec::new(),
            steps: Vec::new(),
            accum: Vec::new(),
            micro: 0,
            host: Vec::new(),
            times: StepTimes::default(),
        }
    }

    /// The process group.
    pub fn dist(&self) -> &Dist {
        self.dist
    }

    /// Makes every process's parameters, generator offsets, optimizer state and step count equal
    /// to rank 0's. Every process must have built the same model and optimizer (same names,
    /// shapes and number of generators): a difference is [`DistError::Mismatch`].
    pub fn broadcast(&mut self, model: &dyn Module, opt: &mut Optimizer) -> Result<()> {
        let mut tensors = model.named_parameters();
        tensors.extend(opt.state_tensors());
        let offsets = model.rng_offsets();
        let mut h = Fnv::default();
        for (name, t) in &tensors {
            h.str(name);
            t.shape().iter().for_each(|&d| h.u64(d as u64));
            h.str(&t.dtype().to_string());
        }
        h.u64(offsets.len() as u64);
        let (lo, hi) = self.dist.min_max(h.0, "the models' layouts");
        if lo != hi {
            return Err(DistError::Mismatch(format!(
                "rank {} built a model or optimizer whose parameter names, shapes or generators \
                 differ from another rank's; every process must build the same model",
                self.dist.rank()
            )));
        }
        let mut flat = Vec::new();
        for (name, t) in &tensors {
            if t.dtype() != kiln_ops::DType::F32 {
                return Err(DistError::Config(format!(
                    "{name} is {}; data-parallel training broadcasts f32 tensors",
                    t.dtype()
                )));
            }
            flat.extend(t.to_vec()?);
        }
        for chunk in flat.chunks_mut((self.cfg.bucket_bytes / 4).max(1)) {
            self.dist
                .broadcast(chunk, "the parameters and optimizer state");
        }
        let mut meta: Vec<u64> = std::iter::once(opt.steps())
            .chain(offsets.iter().map(|&o| o as u64))
            .collect();
        self.dist
            .broadcast(&mut meta, "the step count and generator offsets");
        if !self.dist.is_root() {
            let mut at = 0;
            for (_, t) in &tensors {
                let n = t.numel();
                self.dev.write(&t.array().buf, &flat[at..at + n])?;
                at += n;
            }
            opt.set_steps(meta[0]);
            let offsets: Vec<u32> = meta[1..].iter().map(|&o| o as u32).collect();
            model.set_rng_offsets(&offsets)?;
        }
        Ok(())
    }

    /// Records forward and backward for one local batch size: `forward` builds the loss from
    /// input buffers the caller rewrites before each later run. The recorded work is this step's:
    /// follow with [`Self::step`] or [`Self::no_sync`] (before recording another). Returns the
    /// step's id.
    ///
    /// The first recording fixes the buckets, from the order in which backward finishes the
    /// gradients, and checks with the other processes that theirs are the same: every process
    /// must make its first recording at the same step.
    pub fn record<E: Into<DistError>>(
        &mut self,
        opt: &Optimizer,
        guard: bool,
        mut forward: impl FnMut() -> std::result::Result<Tensor, E>,
    ) -> Result<usize> {
        if self.steps.iter().any(|s| s.fresh) {
            return Err(DistError::Config(
                "a recorded step has not run yet: call step or no_sync before recording another"
                    .into(),
            ));
        }
        let params: Vec<Tensor> = opt.params().cloned().collect();
        // Until a recording succeeds, the next one is the first.
        let first = self.buckets.is_empty();
        if !first
            && (params.len() != self.params.len()
                || params.iter().zip(&self.params).any(|(a, b)| !a.same(b)))
        {
            return Err(DistError::Config(
                "the optimizer's parameters changed since the first recorded step".into(),
            ));
        }
        let cap = (self.cfg.bucket_bytes / 4).max(1);
        let fixed = &self.buckets;
        let dev = &self.dev;
        let mut ready = vec![false; params.len()];
        let mut building: Vec<Bucket> = Vec::new();
        let mut current = Bucket::default();
        let mut done = 0;
        let mut pieces = Vec::new();
        opt.zero_grad();
        dev.begin_capture()?;
        let recorded = (|| -> Result<Tensor> {
            let loss = forward().map_err(Into::into)?;
            loss.backward_with(&mut |leaf| {
                let Some(i) = params.iter().position(|p| p.same(leaf)) else {
                    return Ok(());
                };
                ready[i] = true;
                let cut = if first {
                    current.params.push(i);
                    current.len += leaf.numel();
                    if current.len >= cap {
                        building.push(std::mem::take(&mut current));
                        1
                    } else {
                        0
                    }
                } else {
                    // Buckets complete in their order, whatever order this graph finishes in.
                    let before = done;
                    while done < fixed.len() && fixed[done].params.iter().all(|&p| ready[p]) {
                        done += 1;
                    }
                    done - before
                };
                for _ in 0..cut {
                    pieces.push(dev.end_capture()?);
                    dev.begin_capture()?;
                }
                Ok(())
            })?;
            Ok(loss)
        })();
        // End the capture whatever happened, so the device is left recording nothing.
        let last = dev.end_capture()?;
        let loss = recorded?;
        if first && !current.params.is_empty() {
            building.push(current);
        }
        let buckets = if first { &building } else { &self.buckets };
        if buckets.is_empty() {
            return Err(DistError::Config(
                "no parameter received a gradient: nothing to train".into(),
            ));
        }
        let grads: Vec<Option<Array>> = params.iter().map(Tensor::grad).collect();
        for (b, bucket) in buckets.iter().enumerate() {
            if let Some(&p) = bucket.params.iter().find(|&&p| grads[p].is_none()) {
                return Err(DistError::Config(format!(
                    "parameter {p} got a gradient in the first recorded step (bucket {b}) but \
                     none in this one"
                )));
            }
        }
        let tail = if pieces.len() < buckets.len() {
            pieces.push(last);
            // Nothing comes after the last bucket completes at the very end.
            dev.begin_capture()?;
            dev.end_capture()?
        } else {
            last
        };
        if first {
            self.check_buckets(&building)?;
            self.host = building
                .iter()
                .enumerate()
                .map(|(b, k)| {
                    let n = k.len + usize::from(b == 0);
                    (vec![0.0; n], vec![0.0; n])
                })
                .collect();
            self.buckets = building;
            self.params = params;
        }
        self.steps.push(Recorded {
            pieces,
            tail,
            grads,
            loss,
            guard,
            fresh: true,
            update: None,
            accumulate: None,
            merges: self.buckets.iter().map(|_| None).collect(),
        });
        Ok(self.steps.len() - 1)
    }

    /// Every process must cut the same buckets, or the all-reduces would pair different
    /// gradients (or hang on different sizes).
    fn check_buckets(&self, buckets: &[Bucket]) -> Result<()> {
        let mut h = Fnv::default();
        for b in buckets {
            h.u64(b.len as u64);
            b.params.iter().for_each(|&p| h.u64(p as u64));
        }
        let (lo, hi) = self.dist.min_max(h.0, "the gradient buckets");
        if lo != hi {
            return Err(DistError::Mismatch(format!(
                "rank {} cut its gradients into buckets that differ from another rank's \
                 (a different model, or a graph that depends on the data)",
                self.dist.rank()
            )));
        }
        Ok(())
    }

    /// The loss tensor of a recorded step (its buffer holds the combined loss after each
    /// [`Self::step`]).
    pub fn loss(&self, step: usize) -> Option<&Tensor> {
        self.steps.get(step).map(|s| &s.loss)
    }

    /// Gradient elements per bucket, in the order they are sent.
    pub fn bucket_sizes(&self) -> Vec<usize> {
        self.buckets.iter().map(|b| b.len).collect()
    }

    /// Where the synchronised steps' time went so far.
    pub fn times(&self) -> StepTimes {
        self.times
    }

    /// Starts counting [`Self::times`] afresh.
    pub fn reset_times(&mut self) {
        self.times = StepTimes::default();
    }

    /// Runs recorded step `step` (forward, backward) on the batch in its input buffers, combines
    /// the gradients of every process (this one's counting `weight`: its share of the batch,
    /// divided by the micro-batches accumulated since the last step where there were any) and
    /// applies the optimizer's update, beginning the optimizer's step (as `Optimizer::step`
    /// does). Returns the loss combined with the same weights.
    pub fn step(&mut self, opt: &mut Optimizer, step: usize, weight: f32) -> Result<f32> {
        self.sync(Some(step), weight, Some(opt))
    }

    /// A step in which this process has no examples: it contributes nothing and applies the
    /// others' combined update (beginning the optimizer's step), through the first recorded
    /// step's buffers (which must have run).
    pub fn empty_step(&mut self, opt: &mut Optimizer) -> Result<f32> {
        self.sync(None, 0.0, Some(opt))
    }

    /// Runs recorded step `step`'s forward and backward and adds its gradients into a local
    /// accumulator, without communicating (PyTorch's `no_sync`); the next [`Self::step`] sends
    /// the sum. There is no update, and the optimizer's step does not begin.
    pub fn no_sync(&mut self, step: usize) -> Result<()> {
        self.ensure_accumulators()?;
        let dev = self.dev.clone();
        let rec = self
            .steps
            .get_mut(step)
            .ok_or_else(|| DistError::Config(format!("no recorded step {step}")))?;
        if !rec.fresh {
            for p in &rec.pieces {
                dev.replay(p)?;
            }
            dev.replay(&rec.tail)?;
        }
        rec.fresh = false;
        match &rec.accumulate {
            Some(plan) => dev.replay(plan)?,
            None => {
                dev.begin_capture()?;
                let r = accumulate_into(&dev, &self.accum, &rec.grads);
                let plan = dev.end_capture()?;
                r?;
                rec.accumulate = Some(plan);
            }
        }
        self.micro += 1;
        Ok(())
    }

    fn ensure_accumulators(&mut self) -> Result<()> {
        if !self.accum.is_empty() {
            return Ok(());
        }
        let first = self
            .steps
            .first()
            .ok_or_else(|| DistError::Config("no_sync before any recorded step".into()))?;
        self.accum = first
            .grads
            .iter()
            .map(|g| {
                g.as_ref()
                    .map(|g| -> Result<Array> {
                        let a = self.dev.alloc(g.numel(), kiln_ops::DType::F32)?;
                        kiln_ops::fill(&self.dev, &a, 0.0)?;
                        Ok(Array {
                            buf: a,
                            shape: g.shape.clone(),
                        })
                    })
                    .transpose()
            })
            .collect::<Result<_>>()?;
        Ok(())
    }

    /// One synchronised step (see [`Self::step`]); `step` None: no examples here.
    ///
    /// One loop drives the whole step: it submits the next bucket's piece of the recorded step
    /// (the bucket's gradient copies riding at the end of that submission), starts the all-reduce
    /// of each bucket whose copies have arrived, and uploads each combined bucket, in whatever
    /// order they become possible. On a GPU the submissions return at once and the all-reduces
    /// overlap the device's work on later pieces; a software adapter that computes inside the
    /// submission still overlaps each bucket's all-reduce with the next piece's computation in
    /// the other processes.
    ///
    /// With `opt`, the optimizer's step begins here (in its `step` while the update records);
    /// without, the caller has begun it.
    fn sync(
        &mut self,
        step: Option<usize>,
        weight: f32,
        opt: Option<&mut Optimizer>,
    ) -> Result<f32> {
        let t0 = Instant::now();
        let target = step.unwrap_or(0);
        let Some(rec) = self.steps.get(target) else {
            return Err(DistError::Config(format!("no recorded step {target}")));
        };
        if step.is_none() && (rec.fresh || rec.update.is_none()) {
            return Err(DistError::Config(
                "a step without examples needs a step that ran before it".into(),
            ));
        }
        if step.is_none() && self.micro > 0 {
            return Err(DistError::Config(
                "a step without examples cannot send gradients accumulated by no_sync".into(),
            ));
        }
        let counted = !rec.fresh;
        let dev = self.dev.clone();
        let nb = self.buckets.len();
        let merging = self.micro > 0;
        self.micro = 0;
        // What the uploads write into, apart from the recorded step the submissions may record
        // into (merges).
        let grads = rec.grads.clone();
        let loss_buf = rec.loss.array().buf.clone();
        let mut tickets: Vec<Vec<ReadTicket>> = Vec::with_capacity(nb);
        let mut times = StepTimes::default();
        let mut rec = match step {
            Some(id) => Some(&mut self.steps[id]),
            None => None,
        };
        // A step just recorded has all its work pending: one submission, the copies at its end.
        if let Some(r) = rec.as_deref_mut().filter(|r| r.fresh) {
            let t = Instant::now();
            for (k, bucket) in self.buckets.iter().enumerate() {
                if merging {
                    record_merge(&dev, r, &self.accum, bucket, k)?;
                }
                tickets.push(read_bucket(&dev, r, bucket, k)?);
            }
            dev.flush()?;
            r.fresh = false;
            // Nothing left to submit in the loop.
            rec = None;
            times.submit += t.elapsed().as_secs_f64();
        }
        let (dist, buckets, accum) = (self.dist, &self.buckets, &self.accum);
        let mut global_loss = 0.0f32;
        let mut arrived: Vec<Vec<Option<Vec<f32>>>> = Vec::with_capacity(nb);
        let mut pairs = self.host.iter_mut();
        let result = mpi::request::scope(|scope| -> Result<()> {
            let mut requests = VecDeque::new();
            let (mut started, mut finished) = (0, 0);
            let mut idle = Backoff::default();
            let mut err: Option<DistError> = None;
            while finished < nb {
                let mut progressed = false;
                // Start the all-reduce of the next bucket once its copies are all here.
                if started < nb {
                    let t = Instant::now();
                    let ready = match (step, &err) {
                        (None, _) => true,
                        // A failure still takes part in every all-reduce, with zeros: the
                        // others are waiting for this process's part.
                        (Some(_), Some(_)) => true,
                        (Some(_), None) if started >= tickets.len() => false,
                        (Some(_), None) => {
                            if arrived.len() <= started {
                                arrived.push(tickets[started].iter().map(|_| None).collect());
                            }
                            arrive(&tickets[started], &mut arrived[started]).unwrap_or_else(|e| {
                                err = Some(e);
                                true
                            })
                        }
                    };
                    if ready {
                        if let Some((send, recv)) = pairs.next() {
                            match (step, &err) {
                                (Some(_), None) => gather(send, &mut arrived[started], weight),
                                _ => send.iter_mut().for_each(|v| *v = 0.0),
                            }
                            times.bytes += (send.len() * 4) as u64;
                            let send: &Vec<f32> = send;
                            requests.push_back(dist.world().immediate_all_reduce_into(
                                scope,
                                &send[..],
                                &mut recv[..],
                                SystemOperation::sum(),
                            ));
                            started += 1;
                            progressed = true;
                        }
                        times.copies += t.elapsed().as_secs_f64();
                    } else {
                        times.compute += t.elapsed().as_secs_f64();
                    }
                }
                // Upload the oldest combined bucket.
                if let Some(r) = requests.pop_front() {
                    match r.test_with_data() {
                        Ok((_, combined)) => {
                            let t = Instant::now();
                            if err.is_none() {
                                if let Err(e) = upload(&dev, &grads, &buckets[finished], combined) {
                                    err = Some(e);
                                }
                            }
                            if finished == 0 {
                                global_loss = combined[combined.len() - 1];
                            }
                            times.copies += t.elapsed().as_secs_f64();
                            finished += 1;
                            progressed = true;
                        }
                        Err(r) => requests.push_front(r),
                    }
                }
                // Submit the next piece.
                if let (Some(r), None) = (rec.as_deref_mut(), &err) {
                    let k = tickets.len();
                    if k < nb {
                        let t = Instant::now();
                        match submit_bucket(&dev, r, accum, &buckets[k], k, merging) {
                            Ok(t) => tickets.push(t),
                            Err(e) => err = Some(e),
                        }
                        times.submit += t.elapsed().as_secs_f64();
                        progressed = true;
                    }
                }
                if progressed {
                    idle.reset();
                    continue;
                }
                dist.check_deadline(t0, &|| {
                    if started < nb {
                        format!("the copy of gradient bucket {started} of {nb} to the host")
                    } else {
                        format!("the all-reduce of gradient bucket {finished} of {nb}")
                    }
                });
                let t = Instant::now();
                idle.wait();
                let waited = t.elapsed().as_secs_f64();
                if started < nb {
                    times.compute += waited;
                } else {
                    times.allreduce += waited;
                }
            }
            err.map_or(Ok(()), Err)
        });
        result?;
        // 3. The update, on the combined gradients. Its guard reads the combined loss, so every
        //    process skips or applies the same update.
        let t = Instant::now();
        let rec = &mut self.steps[target];
        if step.is_some() && counted {
            dev.replay(&rec.tail)?;
        }
        dev.write(&loss_buf, &[global_loss])?;
        match (&rec.update, opt) {
            (Some(plan), opt) => {
                if let Some(opt) = opt {
                    opt.prepare_replay()?;
                }
                dev.replay(plan)?
            }
            (None, Some(opt)) => {
                // The optimizer reads the parameters' current gradients: they must be this step's.
                let current =
                    rec.grads.iter().zip(&self.params).all(|(g, p)| {
                        g.as_ref().map(|g| g.buf.id()) == p.grad().map(|g| g.buf.id())
                    });
                if !current {
                    return Err(DistError::Config(
                        "another step was recorded before this one's first run: record a \
                         step, run it, then record the next"
                            .into(),
                    ));
                }
                dev.begin_capture()?;
                let r = if rec.guard {
                    opt.step_guarded(Some(&loss_buf))
                } else {
                    opt.step()
                };
                let plan = dev.end_capture()?;
                r?;
                rec.update = Some(plan);
            }
            (None, None) => {
                return Err(DistError::Config(
                    "the step's update was never recorded (run it once with step)".into(),
                ))
            }
        }
        times.submit += t.elapsed().as_secs_f64();
        if counted {
            let s = &mut self.times;
            s.steps += 1;
            s.total += t0.elapsed().as_secs_f64();
            s.submit += times.submit;
            s.compute += times.compute;
            s.copies += times.copies;
            s.allreduce += times.allreduce;
            s.bytes += times.bytes;
        }
        Ok(global_loss)
    }
}

/// Submits bucket `k`'s piece of a recorded step, with the copies of its gradients at the end of
/// the submission that finishes them; what no_sync accumulated is added first when `merging`.
fn submit_bucket(
    dev: &Device,
    rec: &mut Recorded,
    accum: &[Option<Array>],
    bucket: &Bucket,
    k: usize,
    merging: bool,
) -> Result<Vec<ReadTicket>> {
    if !merging {
        let t = read_bucket(dev, rec, bucket, k)?;
        dev.replay(&rec.pieces[k])?;
        return Ok(t);
    }
    dev.replay(&rec.pieces[k])?;
    if rec.merges[k].is_none() {
        // Recorded now, it runs in the next submission: the copies' own.
        record_merge(dev, rec, accum, bucket, k)?;
        let t = read_bucket(dev, rec, bucket, k)?;
        dev.flush()?;
        return Ok(t);
    }
    let t = read_bucket(dev, rec, bucket, k)?;
    if let Some(plan) = &rec.merges[k] {
        dev.replay(plan)?;
    }
    Ok(t)
}

/// Records bucket `k`'s merge (gradients += accumulator, accumulator = 0) unless it exists;
/// recording also queues it to run.
fn record_merge(
    dev: &Device,
    rec: &mut Recorded,
    accum: &[Option<Array>],
    bucket: &Bucket,
    k: usize,
) -> Result<()> {
    if let Some(plan) = &rec.merges[k] {
        // Already recorded: queue its dispatches again by replaying after the pending work.
        dev.replay(plan)?;
        return Ok(());
    }
    dev.begin_capture()?;
    let r = merge_into(dev, &rec.grads, accum, &bucket.params);
    let plan = dev.end_capture()?;
    r?;
    rec.merges[k] = Some(plan);
    Ok(())
}

/// Queues the copies of bucket `k`'s gradients (and, in bucket 0, the loss) to the host: they
/// ride at the end of the next submission.
fn read_bucket(dev: &Device, rec: &Recorded, bucket: &Bucket, k: usize) -> Result<Vec<ReadTicket>> {
    let mut t = Vec::with_capacity(bucket.params.len() + 1);
    for &p in &bucket.params {
        t.push(dev.read_async(&grad(&rec.grads, p)?.buf)?);
    }
    if k == 0 {
        t.push(dev.read_async(&rec.loss.array().buf)?);
    }
    Ok(t)
}

fn grad(grads: &[Option<Array>], p: usize) -> Result<&Array> {
    grads[p]
        .as_ref()
        .ok_or_else(|| DistError::Config(format!("parameter {p} has no gradient")))
}

/// Collects the copies that have come back, without waiting; true once all of them have.
fn arrive(tickets: &[ReadTicket], arrived: &mut [Option<Vec<f32>>]) -> Result<bool> {
    for (t, a) in tickets.iter().zip(arrived.iter_mut()) {
        if a.is_none() {
            match t.try_read::<f32>()? {
                Some(v) => *a = Some(v),
                None => return Ok(false),
            }
        }
    }
    Ok(true)
}

/// A bucket's values times `weight`, into `send` (the bucket's layout: its gradients in order,
/// then the loss in bucket 0).
fn gather(send: &mut [f32], arrived: &mut [Option<Vec<f32>>], weight: f32) {
    let mut at = 0;
    for v in arrived.iter_mut().filter_map(Option::take) {
        let n = v.len().min(send.len() - at);
        for (s, g) in send[at..at + n].iter_mut().zip(&v) {
            *s = g * weight;
        }
        at += n;
    }
}

/// Writes a bucket's combined gradients into the step's gradient buffers.
fn upload(dev: &Device, grads: &[Option<Array>], bucket: &Bucket, combined: &[f32]) -> Result<()> {
    let mut at = 0;
    for &p in &bucket.params {
        let g = grad(grads, p)?;
        let n = g.numel();
        dev.write(&g.buf, &combined[at..at + n])?;
        at += n;
    }
    Ok(())
}

/// `acc[p] += grads[p]` for every parameter with a gradient, in place (no_sync).
fn accumulate_into(dev: &Device, acc: &[Option<Array>], grads: &[Option<Array>]) -> Result<()> {
    for (a, g) in acc.iter().zip(grads) {
        if let (Some(a), Some(g)) = (a, g) {
            kiln_ops::layout::slice_add(dev, a, g, 0, 0)?;
        }
    }
    Ok(())
}

/// `grads[p] += acc[p]`, then `acc[p] = 0`, for the parameters `params`, in place. Parameters
/// whose gradients share one buffer (a rule that hands one gradient to two leaves) are added
/// once: their accumulators hold the same sums.
fn merge_into(
    dev: &Device,
    grads: &[Option<Array>],
    acc: &[Option<Array>],
    params: &[usize],
) -> Result<()> {
    for &p in params {
        let (Some(g), Some(a)) = (&grads[p], &acc[p]) else {
            continue;
        };
        let first = grads
            .iter()
            .position(|o| o.as_ref().is_some_and(|o| o.buf.id() == g.buf.id()));
        if first == Some(p) {
            kiln_ops::layout::slice_add(dev, g, a, 0, 0)?;
        }
        kiln_ops::fill(dev, &a.buf, 0.0)?;
    }
    Ok(())
}

impl DataParallel for DistributedDataParallel<'_> {
    fn rank(&self) -> usize {
        self.dist.rank()
    }

    fn world_size(&self) -> usize {
        self.dist.size()
    }

    fn broadcast(&mut self, model: &dyn Module, opt: &mut Optimizer) -> kiln_train::Result<()> {
        Ok(DistributedDataParallel::broadcast(self, model, opt)?)
    }

    fn record_step(
        &mut self,
        opt: &mut Optimizer,
        guard: bool,
        share: Share,
        forward: &mut dyn FnMut() -> kiln_train::Result<Tensor>,
    ) -> kiln_train::Result<(usize, Tensor, f32)> {
        let id = self.record(opt, guard, forward)?;
        let loss = self.step(opt, id, share.weight())?;
        Ok((id, self.steps[id].loss.clone(), loss))
    }

    fn replay_step(&mut self, step: usize, share: Share) -> kiln_train::Result<f32> {
        Ok(self.sync(Some(step), share.weight(), None)?)
    }

    fn empty_step(&mut self, _share: Share) -> kiln_train::Result<f32> {
        Ok(self.sync(None, 0.0, None)?)
    }
}

/// FNV-1a: a hash that is the same in every process and build, for comparing layouts.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 = (self.0 ^ x as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.bytes(s.as_bytes());
    }
}
