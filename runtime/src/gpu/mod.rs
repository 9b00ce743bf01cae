//! The GPU backend: the WGSL kernels and plan of `backend::wgsl` run with wgpu.
//!
//! Loading ([`GpuModel::new`]): picks the best adapter (discrete, integrated,
//! virtual, then software), requests a device with the adapter's own limits,
//! lowers the graph for that device's binding limit, builds one pipeline per
//! kernel with an explicit bind-group layout from the plan, and uploads every
//! weight buffer once from the plan's segments (f32 or f16).
//!
//! Running ([`GpuModel::run_with_caches`]): buffers of computed values are sized for the
//! token count (and inputs for the source length) and kept for later runs with
//! as many tokens and source rows or fewer; each run writes the inputs and every
//! step's params (token count, capacity, cached positions, source length),
//! records all steps into one command buffer, and reads the outputs back
//! through readback buffers kept with the others.
//!
//! Encoder-decoder models run as the two graphs of `passes::stages::split`, a
//! `GpuModel` each: the encoder as any stateless graph over its tokens, the
//! decoder with its `encoder.N` inputs (`[source, W]`, the encoder's outputs),
//! whose rows bind `source`. A graph the backend cannot run (an unsplit one) is
//! refused at load with the reason.
//!
//! KV caches ([`GpuCaches`]) are device buffers a session owns: a call appends
//! its rows at the positions already held and attention reads them there, so a
//! decode step uploads its token ids and reads back its outputs (the logits
//! row of a `last_token` graph) and nothing else. [`GpuModel::run`] runs on
//! fresh caches, as a first call. There is no
//! host round-trip between routing and the expert matmuls. Sizes are checked
//! against the device's limits before anything is submitted, and wgpu's
//! validation errors are returned as errors, never panics.

mod device;

pub use device::AdapterSummary;
use device::Gpu;
use moec_compiler::backend::wgsl::{self, Contents, Elem, Options, Plan, Segment, Step};
use moec_compiler::diagnostic::Diagnostic;
use moec_compiler::interp;
use moec_compiler::ir::{Graph, Syms};
use moec_compiler::tensor::{Tensor, TensorData};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Choices for [`GpuModel::new`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuOptions {
    /// Store matmul weights as f16 (needs the adapter's `shader-f16`).
    pub f16_weights: bool,
    /// Bind at most this many bytes per storage binding (below the adapter's own limit).
    pub max_binding_bytes: Option<u64>,
}

/// A graph compiled to WGSL, its pipelines built and its weights uploaded.
pub struct GpuModel {
    gpu: Gpu,
    plan: Plan,
    graph: Graph,
    pipelines: Vec<(wgpu::ComputePipeline, wgpu::BindGroupLayout)>,
    /// Weight buffers, by plan buffer index.
    weights: BTreeMap<usize, wgpu::Buffer>,
    /// What uploading the weights lost (f16 overflow).
    warnings: Vec<Diagnostic>,
    /// Buffers for the most tokens run so far.
    state: Mutex<Option<RunState>>,
}

/// Per-size run resources.
struct RunState {
    tokens: usize,
    /// Source rows the input buffers hold (an encoder-decoder model's decoder).
    source: usize,
    /// Plan buffer index → buffer, for inputs and computed values.
    buffers: BTreeMap<usize, wgpu::Buffer>,
    /// Per kernel step: its params uniform and bind group.
    steps: Vec<Option<(wgpu::Buffer, wgpu::BindGroup)>>,
    /// The caches the bind groups bind (`GpuCaches::id`).
    bound_caches: u64,
    /// Per graph output: the buffer it is read back through.
    readback: Vec<wgpu::Buffer>,
}

/// The KV caches of one sequence, on the device: one buffer per state of the
/// graph, each with room for `positions` rows. What they hold is only meaningful
/// up to the positions the caller says are held (`past` of a run).
pub struct GpuCaches {
    /// Distinguishes cache sets, so bind groups are rebuilt for another one.
    id: u64,
    positions: usize,
    /// Plan buffer index → buffer.
    buffers: BTreeMap<usize, wgpu::Buffer>,
}

fn next_caches_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl GpuModel {
    /// Compiles `g` for the best adapter and uploads its bound `weights`.
    pub fn new(g: &Graph, weights: &[Tensor], options: GpuOptions) -> Result<GpuModel, String> {
        interp::check_weights(g, weights)?;
        if let Some(f) = g.stored.values().next() {
            return Err(format!(
                "the gpu backend reads f32 weights (or f16 with --f16-weights), not {f}: \
                 --weight-format and --expert-format are for the interp and cpu backends"
            ));
        }
        let gpu = Gpu::new(options.f16_weights)?;
        let program = wgsl::lower(
            g,
            &Options {
                max_binding_bytes: options
                    .max_binding_bytes
                    .map_or(gpu.max_binding_bytes(), |m| {
                        m.min(gpu.max_binding_bytes()).max(4)
                    }),
                f16_weights: options.f16_weights,
            },
        )?;
        cache_bytes(
            &program.plan,
            program.plan.max_positions.unwrap_or(0) as usize,
        )?;
        let pipelines = program
            .plan
            .kernels
            .iter()
            .zip(&program.sources)
            .map(|(k, src)| gpu.pipeline(k, src))
            .collect::<Result<Vec<_>, String>>()?;
        let mut uploaded = BTreeMap::new();
        let mut warnings = Vec::new();
        for (i, b) in program.plan.buffers.iter().enumerate() {
            if let Contents::Weights { segments } = &b.contents {
                let (bytes, warning) = fill(&b.name, segments, b.elem, weights)?;
                warnings.extend(warning);
                uploaded.insert(i, gpu.upload(&b.name, &bytes)?);
            }
        }
        gpu.check_errors("uploading weights")?;
        Ok(GpuModel {
            gpu,
            plan: program.plan,
            graph: g.clone(),
            pipelines,
            weights: uploaded,
            warnings,
            state: Mutex::new(None),
        })
    }

    /// The plan the model runs.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Warnings from preparing the model (weights that overflow f16).
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
    }

    /// The adapter the model runs on.
    pub fn adapter(&self) -> &AdapterSummary {
        self.gpu.summary()
    }

    /// Runs the graph on named inputs, as a first call: a stateful graph starts
    /// from empty caches (with room for this call's tokens).
    pub fn run(
        &self,
        inputs: &BTreeMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>, String> {
        let tokens = interp::token_count(&self.graph, inputs)?;
        let mut caches = self.caches(tokens)?;
        self.run_with_caches(inputs, &mut caches, 0)
    }

    /// KV caches on the device for `positions` positions, refused with both numbers
    /// when one would not fit one storage binding of the adapter.
    pub fn caches(&self, positions: usize) -> Result<GpuCaches, String> {
        let mut buffers = BTreeMap::new();
        for (i, bytes) in cache_bytes(&self.plan, positions)? {
            buffers.insert(i, self.gpu.storage(&self.plan.buffers[i].name, bytes));
        }
        self.gpu.check_errors("allocating the KV caches")?;
        Ok(GpuCaches {
            id: next_caches_id(),
            positions,
            buffers,
        })
    }

    /// Runs the graph on named inputs as the call after `past` positions held in
    /// `caches`, appending this call's rows to them.
    pub fn run_with_caches(
        &self,
        inputs: &BTreeMap<String, Tensor>,
        caches: &mut GpuCaches,
        past: usize,
    ) -> Result<BTreeMap<String, Tensor>, String> {
        let Syms { tokens, source, .. } = interp::input_syms(&self.graph, inputs)?;
        interp::check_token_ids(&self.graph, inputs)?;
        if !self.graph.states.is_empty() && past + tokens > caches.positions {
            return Err(format!(
                "{tokens} new tokens after {past} do not fit the KV caches, which hold {} positions",
                caches.positions
            ));
        }
        let mut guard = self
            .state
            .lock()
            .map_err(|_| "the GPU model's state is poisoned by an earlier failure".to_string())?;
        if guard
            .as_ref()
            .is_none_or(|s| s.tokens < tokens || s.source < source)
        {
            // Never smaller than before in either symbol.
            let (t0, s0) = guard.as_ref().map_or((1, 0), |s| (s.tokens, s.source));
            *guard = Some(self.allocate(tokens.max(t0), source.max(s0))?);
        }
        let state = guard.as_mut().expect("allocated above");
        if state.bound_caches != caches.id {
            self.bind(state, caches);
        }
        let state = &*state;
        for (i, b) in self.plan.buffers.iter().enumerate() {
            if let Contents::Input { name } = &b.contents {
                let bytes: &[u8] = match &inputs[name].data {
                    TensorData::F32(v) => bytemuck::cast_slice(v),
                    TensorData::I32(v) => bytemuck::cast_slice(v),
                };
                self.gpu.write(&state.buffers[&i], bytes);
            }
        }
        let syms = Syms {
            tokens,
            past,
            source,
        };
        let mut encoder = self.gpu.encoder();
        for (step, res) in self.plan.steps.iter().zip(&state.steps) {
            match (step, res) {
                (
                    Step::Kernel {
                        kernel,
                        workgroups,
                        capacity,
                        ..
                    },
                    Some((params, bind_group)),
                ) => {
                    let cap = capacity.map_or(0, |c| c.eval(tokens));
                    self.gpu.write(
                        params,
                        bytemuck::cast_slice(&[tokens as u32, cap, past as u32, source as u32]),
                    );
                    if let Some((x, y)) = workgroups.count(syms, self.gpu.max_workgroups()) {
                        if x > self.gpu.max_workgroups() {
                            return Err(format!(
                                "{} needs {x} workgroups at {tokens} tokens, more than the adapter allows ({})",
                                self.plan.kernels[*kernel].name,
                                self.gpu.max_workgroups()
                            ));
                        }
                        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                            label: None,
                            timestamp_writes: None,
                        });
                        pass.set_pipeline(&self.pipelines[*kernel].0);
                        pass.set_bind_group(0, bind_group, &[]);
                        pass.dispatch_workgroups(x, y, 1);
                    }
                }
                (
                    Step::Copy {
                        src,
                        dst,
                        dst_offset,
                        elements,
                    },
                    _,
                ) => {
                    let n = elements.eval(syms) as u64 * 4;
                    if n > 0 {
                        encoder.copy_buffer_to_buffer(
                            self.buffer(state, caches, *src),
                            0,
                            self.buffer(state, caches, *dst),
                            dst_offset.eval(syms) as u64 * 4,
                            n,
                        );
                    }
                }
                _ => return Err("internal error: a kernel step without resources".into()),
            }
        }
        let mut reads = Vec::new();
        for (o, staging) in self.plan.outputs.iter().zip(&state.readback) {
            let shape: Vec<usize> = o.shape.iter().map(|d| d.eval(syms)).collect();
            let bytes = shape.iter().product::<usize>() as u64 * o.elem.bytes();
            if bytes > 0 {
                encoder.copy_buffer_to_buffer(
                    self.buffer(state, caches, o.buffer),
                    0,
                    staging,
                    0,
                    bytes,
                );
            }
            reads.push((o, shape, staging, bytes));
        }
        self.gpu.submit(encoder);
        let mut out = BTreeMap::new();
        for (o, shape, staging, bytes) in reads {
            let data = self.gpu.read(staging, bytes)?;
            let t = match o.elem {
                Elem::I32 => Tensor::i32(shape, bytemuck::pod_collect_to_vec(&data)),
                _ => Tensor::f32(shape, bytemuck::pod_collect_to_vec(&data)),
            };
            out.insert(o.name.clone(), t);
        }
        self.gpu.check_errors("running the kernels")?;
        Ok(out)
    }

    fn buffer<'a>(
        &'a self,
        state: &'a RunState,
        caches: &'a GpuCaches,
        i: usize,
    ) -> &'a wgpu::Buffer {
        self.weights
            .get(&i)
            .or_else(|| caches.buffers.get(&i))
            .unwrap_or_else(|| &state.buffers[&i])
    }

    /// (Re)builds every kernel step's params and bind group over `caches`.
    fn bind(&self, state: &mut RunState, caches: &GpuCaches) {
        let steps = self
            .plan
            .steps
            .iter()
            .map(|step| match step {
                Step::Kernel {
                    kernel, buffers, ..
                } => {
                    let params = self.gpu.uniform(16);
                    let bound: Vec<&wgpu::Buffer> = buffers
                        .iter()
                        .map(|b| self.buffer(state, caches, *b))
                        .collect();
                    let group = self
                        .gpu
                        .bind_group(&self.pipelines[*kernel].1, &params, &bound);
                    Some((params, group))
                }
                Step::Copy { .. } => None,
            })
            .collect();
        state.steps = steps;
        state.bound_caches = caches.id;
    }

    /// Buffers and bind groups for runs of up to `tokens` tokens and `source` source rows.
    fn allocate(&self, tokens: usize, source: usize) -> Result<RunState, String> {
        let syms = Syms {
            tokens,
            past: 0,
            source,
        };
        let mut buffers = BTreeMap::new();
        for (i, b) in self.plan.buffers.iter().enumerate() {
            if matches!(
                b.contents,
                Contents::Weights { .. } | Contents::State { .. }
            ) {
                continue;
            }
            let bytes = b.elements.eval(syms) as u64 * b.elem.bytes();
            if bytes > self.gpu.max_binding_bytes() {
                let (at, hint) = if b.elements.uses_source() {
                    (format!("{source} source rows"), "a shorter source sequence")
                } else {
                    (format!("{tokens} tokens"), "fewer tokens at a time")
                };
                return Err(format!(
                    "`{}` needs {bytes} bytes at {at}, more than one storage binding of this adapter holds ({} bytes); run {hint}",
                    b.name,
                    self.gpu.max_binding_bytes()
                ));
            }
            buffers.insert(i, self.gpu.storage(&b.name, bytes));
        }
        let readback = self
            .plan
            .outputs
            .iter()
            .map(|o| {
                let elements: usize = o.shape.iter().map(|d| d.eval(syms)).product();
                self.gpu.staging(elements as u64 * o.elem.bytes())
            })
            .collect();
        self.gpu.check_errors("allocating buffers")?;
        // Bind groups come with the first caches run on them.
        Ok(RunState {
            tokens,
            source,
            buffers,
            steps: Vec::new(),
            bound_caches: 0,
            readback,
        })
    }
}

/// The bytes of each KV cache buffer of `plan` (by plan buffer index) for
/// `positions` positions, refused with both numbers when one exceeds the
/// binding size the plan was made for (at most the adapter's).
fn cache_bytes(plan: &Plan, positions: usize) -> Result<Vec<(usize, u64)>, String> {
    let max_binding = plan.max_binding_bytes;
    let mut out = Vec::new();
    for (i, b) in plan.buffers.iter().enumerate() {
        if let Contents::State { width, .. } = b.contents {
            let bytes = (positions as u64)
                .saturating_mul(width)
                .saturating_mul(b.elem.bytes());
            if bytes > max_binding {
                return Err(format!(
                    "the KV cache `{}` needs {bytes} bytes for {positions} positions, more than one storage binding holds ({max_binding} bytes); a smaller max_position_embeddings (--set) holds fewer",
                    b.name
                ));
            }
            out.push((i, bytes));
        }
    }
    Ok(out)
}

/// A weight buffer's bytes from its segments.
/// The bytes of a weight buffer; for f16, also a warning naming the buffer when
/// values beyond f16's range (±65504) became infinite.
fn fill(
    name: &str,
    segments: &[Segment],
    elem: Elem,
    weights: &[Tensor],
) -> Result<(Vec<u8>, Option<Diagnostic>), String> {
    let mut values: Vec<f32> = Vec::new();
    for s in segments {
        match s {
            Segment::Weight {
                weight,
                tensor,
                start,
                len,
            } => {
                let data = match weights.get(*weight).map(|t| &t.data) {
                    Some(TensorData::F32(d)) => d,
                    _ => return Err(format!("weight {weight} (`{tensor}`) is not bound as f32")),
                };
                let range = *start as usize..(*start + *len) as usize;
                let part = data.get(range).ok_or_else(|| {
                    format!(
                        "weight `{tensor}` has {} elements, the plan reads {start}..{}",
                        data.len(),
                        start + len
                    )
                })?;
                values.extend_from_slice(part);
            }
            Segment::Fill { value, len } => {
                values.extend(std::iter::repeat_n(*value, *len as usize))
            }
            Segment::Values { values: v } => values.extend_from_slice(v),
        }
    }
    Ok(match elem {
        Elem::F16 => {
            let half: Vec<half::f16> = values.iter().map(|v| half::f16::from_f32(*v)).collect();
            let overflowed = values
                .iter()
                .zip(&half)
                .filter(|(v, h)| v.is_finite() && h.is_infinite())
                .count();
            let warning = (overflowed > 0).then(|| {
                Diagnostic::warning(format!(
                    "weights `{name}`: {overflowed} values are beyond f16's range (±65504) and become infinite"
                ))
                .with_help("run without --f16-weights to keep them as f32")
            });
            (half.iter().flat_map(|h| h.to_le_bytes()).collect(), warning)
        }
        Elem::F32 => (bytemuck::cast_slice(&values).to_vec(), None),
        Elem::I32 => return Err("internal error: an i32 weight buffer".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_beyond_f16_are_a_warning() {
        let w = vec![Tensor::f32(vec![3], vec![1.0, 7e4, -1e6])];
        let segments = [Segment::Weight {
            weight: 0,
            tensor: "w".into(),
            start: 0,
            len: 3,
        }];
        let (bytes, warning) = fill("w.f16", &segments, Elem::F16, &w).unwrap();
        assert_eq!(bytes.len(), 6);
        let warning = warning.expect("a warning");
        assert_eq!(
            warning.severity,
            moec_compiler::diagnostic::Severity::Warning
        );
        assert!(warning.message.contains("2 values"), "{}", warning.message);
        let (_, none) = fill("w.f32", &segments, Elem::F32, &w).unwrap();
        assert!(none.is_none());
    }
}
