//! The wgpu device behind `GpuModel`: adapter choice, limits, buffer and
//! pipeline helpers, and wgpu errors collected instead of panicking.

use moec_compiler::backend::wgsl::{Access, KernelInfo};
use std::fmt;
use std::sync::{Arc, Mutex};

/// What the model runs on, for printing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    /// A CPU implementation (e.g. Mesa's llvmpipe) rather than GPU hardware.
    pub software: bool,
    pub f16: bool,
}

impl fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}, {})",
            self.name,
            self.backend,
            if self.software {
                "software"
            } else {
                "hardware"
            }
        )
    }
}

pub(super) struct Gpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
    limits: wgpu::Limits,
    summary: AdapterSummary,
    errors: Arc<Mutex<Vec<String>>>,
}

/// Preference among adapter kinds: hardware first, software last.
fn rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

impl Gpu {
    pub fn new(f16: bool) -> Result<Gpu, String> {
        // WGPU_BACKEND (vulkan, metal, dx12, gl) restricts the search, as in every wgpu program.
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
        let adapters = pollster::block_on(instance.enumerate_adapters(backends));
        let adapter = adapters
            .into_iter()
            .filter(|a| a.get_downlevel_capabilities().flags.contains(wgpu::DownlevelFlags::COMPUTE_SHADERS))
            .min_by_key(|a| rank(a.get_info().device_type))
            .ok_or_else(|| {
                "no GPU adapter with compute shaders found (wgpu looked for Vulkan, Metal, DX12 and GL); \
                 on a Linux machine without a GPU, install Mesa's software Vulkan driver: \
                 apt-get install mesa-vulkan-drivers libvulkan1"
                    .to_string()
            })?;
        let info = adapter.get_info();
        let has_f16 = adapter.features().contains(wgpu::Features::SHADER_F16);
        let summary = AdapterSummary {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            software: info.device_type == wgpu::DeviceType::Cpu,
            f16: has_f16,
        };
        if f16 && !has_f16 {
            return Err(format!(
                "f16 weights need the `shader-f16` feature, which {summary} lacks"
            ));
        }
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("moec"),
            required_features: if f16 {
                wgpu::Features::SHADER_F16
            } else {
                wgpu::Features::empty()
            },
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| format!("{summary}: cannot open the device: {e}"))?;
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut v) = sink.lock() {
                v.push(e.to_string());
            }
        }));
        Ok(Gpu {
            device,
            queue,
            limits,
            summary,
            errors,
        })
    }

    pub fn summary(&self) -> &AdapterSummary {
        &self.summary
    }

    /// The largest storage binding, in bytes (a multiple of 4).
    pub fn max_binding_bytes(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
            & !3
    }

    pub fn max_workgroups(&self) -> u32 {
        self.limits.max_compute_workgroups_per_dimension
    }

    /// wgpu errors since the last check, as one error naming `what` was being done.
    pub fn check_errors(&self, what: &str) -> Result<(), String> {
        let mut errors = self
            .errors
            .lock()
            .map_err(|_| "the GPU error log is poisoned".to_string())?;
        if errors.is_empty() {
            return Ok(());
        }
        let text = errors.join("\n");
        errors.clear();
        Err(format!("{} failed while {what}: {text}", self.summary))
    }

    pub fn pipeline(
        &self,
        kernel: &KernelInfo,
        source: &str,
    ) -> Result<(wgpu::ComputePipeline, wgpu::BindGroupLayout), String> {
        let storage = |i: usize, a: &Access| wgpu::BindGroupLayoutEntry {
            binding: i as u32 + 1,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage {
                    read_only: *a == Access::Read,
                },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let mut entries = vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        }];
        entries.extend(
            kernel
                .bindings
                .iter()
                .enumerate()
                .map(|(i, a)| storage(i, a)),
        );
        if kernel.bindings.len() > self.limits.max_storage_buffers_per_shader_stage as usize {
            return Err(format!(
                "kernel `{}` binds {} storage buffers, more than {} allows ({})",
                kernel.name,
                kernel.bindings.len(),
                self.summary,
                self.limits.max_storage_buffers_per_shader_stage
            ));
        }
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(&kernel.name),
                entries: &entries,
            });
        let pipeline_layout = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(&kernel.name),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(&kernel.name),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&kernel.name),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some("main"),
                compilation_options: Default::default(),
                cache: None,
            });
        self.check_errors(&format!("building kernel `{}`", kernel.name))?;
        Ok((pipeline, layout))
    }

    fn buffer(&self, label: &str, bytes: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(4).next_multiple_of(4),
            usage,
            mapped_at_creation: false,
        })
    }

    /// A storage buffer holding `bytes` (padded to a multiple of 4).
    pub fn upload(&self, label: &str, bytes: &[u8]) -> Result<wgpu::Buffer, String> {
        let b = self.storage(label, bytes.len() as u64);
        let mut padded = bytes.to_vec();
        padded.resize(bytes.len().next_multiple_of(4), 0);
        self.write(&b, &padded);
        Ok(b)
    }

    pub fn storage(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        use wgpu::BufferUsages as U;
        self.buffer(label, bytes, U::STORAGE | U::COPY_DST | U::COPY_SRC)
    }

    pub fn uniform(&self, bytes: u64) -> wgpu::Buffer {
        use wgpu::BufferUsages as U;
        self.buffer("params", bytes, U::UNIFORM | U::COPY_DST)
    }

    pub fn staging(&self, bytes: u64) -> wgpu::Buffer {
        use wgpu::BufferUsages as U;
        self.buffer("readback", bytes, U::MAP_READ | U::COPY_DST)
    }

    pub fn write(&self, buffer: &wgpu::Buffer, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.queue.write_buffer(buffer, 0, bytes);
        }
    }

    pub fn bind_group(
        &self,
        layout: &wgpu::BindGroupLayout,
        params: &wgpu::Buffer,
        buffers: &[&wgpu::Buffer],
    ) -> wgpu::BindGroup {
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: params.as_entire_binding(),
        }];
        entries.extend(
            buffers
                .iter()
                .enumerate()
                .map(|(i, b)| wgpu::BindGroupEntry {
                    binding: i as u32 + 1,
                    resource: b.as_entire_binding(),
                }),
        );
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout,
            entries: &entries,
        })
    }

    pub fn encoder(&self) -> wgpu::CommandEncoder {
        self.device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
    }

    pub fn submit(&self, encoder: wgpu::CommandEncoder) {
        self.queue.submit([encoder.finish()]);
    }

    /// The first `bytes` of a readback buffer, after the submitted work finishes.
    pub fn read(&self, staging: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>, String> {
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let slice = staging.slice(..bytes);
        let done = Arc::new(Mutex::new(None));
        let flag = done.clone();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            if let Ok(mut d) = flag.lock() {
                *d = Some(r);
            }
        });
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: None,
                timeout: None,
            })
            .map_err(|e| format!("{}: waiting for the kernels: {e}", self.summary))?;
        let mapped = done.lock().ok().and_then(|mut d| d.take());
        match mapped {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(format!("{}: reading results back: {e}", self.summary)),
            None => return Err(format!("{}: results were not mapped", self.summary)),
        }
        let data = slice
            .get_mapped_range()
            .map_err(|e| format!("{}: reading results back: {e}", self.summary))?
            .to_vec();
        staging.unmap();
        Ok(data)
    }
}
