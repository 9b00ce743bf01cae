//! Whole-model building blocks: `embedding(ids, vocab, width)`, `rope(x, NAME)`
//! with the settings of a `rotary NAME { ... }` block, T5's
//! `relative_position_bias(heads, buckets = .., max_distance = .., bidirectional = ..)`
//! table, and `attention(q, k, v, heads = .., kv_heads = ..)`. Keys and values of
//! this call's `tokens` rows are appended to a KV cache the graph declares as state
//! and the queries attend over every cached position; keys of an encoder's
//! `source` rows (an encoder's self-attention, a decoder's cross-attention) are
//! attended as they are, with no cache. Arguments are checked here, with the
//! spec's spans.

use super::bind::{Seg, WeightPath};
use super::consts::{eval_const, Const};
use super::expr::Args;
use super::{Lowerer, Scope};
use crate::diagnostic::Diagnostic;
use crate::ir::{AttentionAttrs, DType, F32Bits, Op, RelativeBias, RopeAttrs, RopeScaling, Value};
use moec_grammar::ast::{Arg, Expr, ExprKind, Field, Ident};

/// The fields a `rotary` block may set.
const ROTARY_FIELDS: &[&str] = &[
    "head_dim",
    "rotary_dim",
    "theta",
    "interleaved",
    "type",
    "factor",
    "low_freq_factor",
    "high_freq_factor",
    "original_max_position_embeddings",
    "beta_fast",
    "beta_slow",
    "attention_factor",
    "mscale",
    "mscale_all_dim",
    "truncate",
];

impl Lowerer<'_> {
    /// `let NAME = embedding(ids, vocab, width)`: the table is weight `NAME` `[vocab, width]`,
    /// or with `tied = EMB` the table of the embedding `EMB` (an encoder-decoder's shared one).
    pub(super) fn embedding(
        &mut self,
        e: &Expr,
        args: &[Arg],
        scope: &Scope,
        path: &WeightPath,
        label: Option<String>,
    ) -> Result<Value, Diagnostic> {
        let a = Args::new(e, "embedding", args, &["tied"])?;
        let [ids, vocab, width] = a.positional::<3>("embedding(ids, vocab_size, hidden_size)")?;
        let id_span = ids.span;
        let ids = self.tensor(ids, scope, path)?;
        if self.graph.value_type(ids).dtype != DType::I32 {
            return Err(Diagnostic::at(
                id_span,
                format!(
                    "embedding looks up i32 token ids, this is {}",
                    self.graph.value_type(ids)
                ),
                "not token ids",
            )
            .with_help("declare the ids as `input input_ids: i32[tokens]`"));
        }
        let (vocab, width) = (self.dim(vocab)?, self.dim(width)?);
        let table = match a.named("tied") {
            Some(t) => self.tied_table(t, scope, vocab, width)?,
            None => self.weight(path, vec![vocab as usize, width as usize], e.span)?,
        };
        self.node(Op::Embedding, &[ids, table], label, e.span)
    }

    /// `rope(x, NAME)`: every head of x rotated by its token's position.
    pub(super) fn rope(
        &mut self,
        e: &Expr,
        args: &[Arg],
        scope: &Scope,
        path: &WeightPath,
    ) -> Result<Value, Diagnostic> {
        let a = Args::new(e, "rope", args, &[])?;
        let [x, settings] = a.positional::<2>("rope(x, ROTARY)")?;
        let x = self.tensor(x, scope, path)?;
        let rotary = match &settings.kind {
            ExprKind::Path(p) if p.len() == 1 => self.rotaries.get(&p[0].name).copied(),
            _ => None,
        }
        .ok_or_else(|| {
            Diagnostic::at(
                settings.span,
                format!("`{settings}` is not a rotary block"),
                "expected the name of a `rotary NAME { ... }`",
            )
        })?;
        let attrs = self.rope_attrs(&rotary.name, &rotary.fields)?;
        let width = self.width(x, e.span)?;
        if width % attrs.head_dim != 0 {
            return Err(Diagnostic::at(
                e.span,
                format!(
                    "rope over heads of {} dims, but the input is {width} wide",
                    attrs.head_dim
                ),
                "not whole heads",
            ));
        }
        let positions = match self.positions {
            Some(p) => p,
            None => {
                let p = self.node(Op::Positions, &[], Some("positions".into()), e.span)?;
                self.positions = Some(p);
                p
            }
        };
        self.node(Op::Rope(attrs), &[x, positions], None, e.span)
    }

    /// A `rotary` block's fields, checked.
    fn rope_attrs(&self, name: &Ident, fields: &[Field]) -> Result<RopeAttrs, Diagnostic> {
        let mut seen: Vec<&Ident> = Vec::new();
        for f in fields {
            if let Some(prev) = seen.iter().find(|p| p.name == f.name.name) {
                return Err(Diagnostic::at(
                    f.name.span,
                    format!("rotary field `{}` is set twice", f.name),
                    "again",
                )
                .with_related(prev.span, "first here"));
            }
            if !ROTARY_FIELDS.contains(&f.name.name.as_str()) {
                return Err(Diagnostic::at(
                    f.name.span,
                    format!("unknown rotary field `{}`", f.name),
                    "unknown field",
                )
                .with_help(format!("rotary fields: {}", ROTARY_FIELDS.join(", "))));
            }
            seen.push(&f.name);
        }
        let field = |n: &str| fields.iter().find(|f| f.name.name == n).map(|f| &f.value);
        let float = |n: &str, default: f64| -> Result<F32Bits, Diagnostic> {
            Ok(F32Bits::new(match field(n) {
                Some(v) => self.float(v, n)?,
                None => default,
            } as f32))
        };
        let head_dim = self.int(
            field("head_dim").ok_or_else(|| {
                Diagnostic::at(
                    name.span,
                    format!("rotary `{name}` needs `head_dim`"),
                    "no head_dim",
                )
            })?,
            "head_dim",
        )?;
        let rotary_dim = match field("rotary_dim") {
            Some(v) => {
                let r = self.int(v, "rotary_dim")?;
                if r % 2 != 0 || r > head_dim {
                    return Err(Diagnostic::at(
                        v.span,
                        format!(
                            "rotary_dim must be even and at most head_dim {head_dim}, found {r}"
                        ),
                        "here",
                    ));
                }
                r
            }
            None => head_dim,
        };
        let theta = float("theta", 10000.0)?;
        if theta.get() <= 1.0 || !theta.get().is_finite() {
            return Err(Diagnostic::at(
                field("theta").map_or(name.span, |v| v.span),
                format!(
                    "theta must be a finite number above 1, found {:?}",
                    theta.get()
                ),
                "here",
            ));
        }
        let flag = |n: &str, default: bool| match field(n) {
            Some(v) => self.bool(v, n),
            None => Ok(default),
        };
        let original = |this: &Self| match field("original_max_position_embeddings") {
            Some(v) => this.int(v, "original_max_position_embeddings"),
            None => Err(Diagnostic::at(
                name.span,
                format!("rotary `{name}` needs `original_max_position_embeddings` for its type"),
                "missing field",
            )),
        };
        let kind = match field("type") {
            Some(v) => Some((self.rope_type(v)?, v)),
            None => None,
        };
        let scaling = match kind {
            None | Some((RopeKind::Default, _)) => RopeScaling::Default,
            Some((RopeKind::Linear, _)) => RopeScaling::Linear {
                factor: float("factor", 1.0)?,
            },
            Some((RopeKind::Llama3, _)) => RopeScaling::Llama3 {
                factor: float("factor", 8.0)?,
                low_freq_factor: float("low_freq_factor", 1.0)?,
                high_freq_factor: float("high_freq_factor", 4.0)?,
                original_max_positions: original(self)?,
            },
            Some((RopeKind::Yarn, _)) => RopeScaling::Yarn {
                factor: float("factor", 1.0)?,
                original_max_positions: original(self)?,
                beta_fast: float("beta_fast", 32.0)?,
                beta_slow: float("beta_slow", 1.0)?,
                attention_factor: float("attention_factor", 0.0)?,
                mscale: float("mscale", 0.0)?,
                mscale_all_dim: float("mscale_all_dim", 0.0)?,
                truncate: flag("truncate", true)?,
            },
        };
        Ok(RopeAttrs {
            head_dim,
            rotary_dim,
            theta,
            interleaved: flag("interleaved", false)?,
            scaling,
        })
    }

    /// `type = "default" | "linear" | "llama3" | "yarn"` (Hugging Face's `rope_type`).
    fn rope_type(&self, e: &Expr) -> Result<RopeKind, Diagnostic> {
        let c = eval_const(e, &self.params)?;
        let kind = match &c {
            Const::Str(s) => match s.as_str() {
                "default" => Some(RopeKind::Default),
                "linear" => Some(RopeKind::Linear),
                "llama3" => Some(RopeKind::Llama3),
                "yarn" => Some(RopeKind::Yarn),
                _ => None,
            },
            _ => None,
        };
        kind.ok_or_else(|| {
            Diagnostic::at(
                e.span,
                format!("unsupported rope type {c}"),
                "not a rope type moec knows",
            )
            .with_help("rope types: \"default\", \"linear\", \"llama3\", \"yarn\"")
        })
    }

    /// `let NAME = attention(q, k, v, heads = H, kv_heads = KV, ...)`: k and v are appended to
    /// the KV caches `NAME.k` and `NAME.v`, and the queries attend over every cached position.
    pub(super) fn attention(
        &mut self,
        e: &Expr,
        args: &[Arg],
        scope: &Scope,
        path: &WeightPath,
        label: Option<String>,
    ) -> Result<Value, Diagnostic> {
        let a = Args::new(
            e,
            "attention",
            args,
            &[
                "heads", "kv_heads", "scale", "window", "sinks", "causal", "bias",
            ],
        )?;
        let [q, k, v] = a.positional::<3>("attention(q, k, v, heads = H, kv_heads = KV)")?;
        let (q, k, v) = (
            self.tensor(q, scope, path)?,
            self.tensor(k, scope, path)?,
            self.tensor(v, scope, path)?,
        );
        let required = |n: &str| {
            a.named(n).ok_or_else(|| {
                Diagnostic::at(
                    e.span,
                    format!("attention needs `{n} = ...`"),
                    "missing argument",
                )
            })
        };
        let heads = self.int(required("heads")?, "heads")?;
        let kv_heads = match a.named("kv_heads") {
            Some(h) => self.int(h, "kv_heads")?,
            None => heads,
        };
        if heads % kv_heads != 0 {
            return Err(Diagnostic::at(
                a.named("kv_heads").map_or(e.span, |h| h.span),
                format!("{heads} query heads cannot share {kv_heads} kv heads evenly"),
                "does not divide heads",
            ));
        }
        let (qw, kw, vw) = (
            self.width(q, e.span)?,
            self.width(k, e.span)?,
            self.width(v, e.span)?,
        );
        let whole = |w: u64, h: u64, what: &str| {
            if w.is_multiple_of(h) {
                Ok(w / h)
            } else {
                Err(Diagnostic::at(
                    e.span,
                    format!("{what} are {w} wide, which is not {h} whole heads"),
                    "here",
                ))
            }
        };
        let head_dim = whole(qw, heads, "the queries")?;
        if whole(kw, kv_heads, "the keys")? != head_dim {
            return Err(Diagnostic::at(
                e.span,
                format!(
                    "queries have {head_dim}-dim heads, keys {}-dim ones",
                    kw / kv_heads
                ),
                "keys and queries must match",
            ));
        }
        let v_head_dim = whole(vw, kv_heads, "the values")?;
        let scale = match a.named("scale") {
            Some(s) => self.float(s, "scale")?,
            None => 1.0 / (head_dim as f64).sqrt(),
        };
        // `window = 0` means no window, as a config's `sliding_window: null` keeps its default.
        let window = match a.named("window") {
            Some(w) => match eval_const(w, &self.params)? {
                Const::Int(0) => None,
                Const::Int(n) if n > 0 => Some(n as u64),
                other => {
                    return Err(Diagnostic::at(
                        w.span,
                        format!(
                        "window must be a positive number of positions or 0 (none), found {other}"
                    ),
                        "here",
                    ))
                }
            },
            None => None,
        };
        let sinks_path = path.child(Seg::name("sinks"));
        let sinks = self.weight_flag(a.named("sinks"), "sinks", &sinks_path)?;
        let causal = match a.named("causal") {
            Some(c) => self.bool(c, "causal")?,
            None => true,
        };
        let bias = match a.named("bias") {
            Some(b) => Some(self.bias_table(b, heads, scope, path)?),
            None => None,
        };
        let key_rows = self.graph.value_type(k).shape[0];
        let (keys, values) = if key_rows.per_token == 0 {
            // Keys of the encoder's source rows: attended as they are, nothing cached.
            if causal || window.is_some() {
                return Err(Diagnostic::at(
                    e.span,
                    format!("attention over keys of {key_rows} rows cannot be causal or windowed"),
                    "keys are not this call's tokens",
                )
                .with_help(
                    "an encoder's attention and a decoder's cross-attention take `causal = false`",
                ));
            }
            (k, v)
        } else {
            let mut cached = Vec::new();
            for (x, part) in [(k, "k"), (v, "v")] {
                let width = self.width(x, e.span)?;
                let state = self
                    .graph
                    .add_state(path.child(Seg::name(part)).key(), width);
                cached.push(self.node(
                    Op::CacheAppend { state },
                    &[x],
                    Some(format!(
                        "{}.{part}",
                        label.as_deref().unwrap_or("attention")
                    )),
                    e.span,
                )?);
            }
            (cached[0], cached[1])
        };
        let mut operands = vec![q, keys, values];
        if sinks {
            operands.push(self.weight(&sinks_path, vec![heads as usize], e.span)?);
        }
        let attrs = AttentionAttrs {
            heads,
            kv_heads,
            head_dim,
            v_head_dim,
            scale: F32Bits::new(scale as f32),
            causal,
            window,
            sinks,
            bias: bias.map(|(_, b)| b),
        };
        operands.extend(bias.map(|(t, _)| t));
        self.node(Op::Attention(attrs), &operands, label, e.span)
    }

    /// `let NAME = relative_position_bias(heads, buckets = B, max_distance = M,
    /// bidirectional = true|false)`: T5's learned bias per bucket of relative position
    /// and head, weight `NAME` `[B, heads]`, shared by every `attention(..., bias = NAME)`.
    pub(super) fn relative_position_bias(
        &mut self,
        e: &Expr,
        args: &[Arg],
        path: &WeightPath,
    ) -> Result<Value, Diagnostic> {
        let a = Args::new(
            e,
            "relative_position_bias",
            args,
            &["buckets", "max_distance", "bidirectional"],
        )?;
        let usage =
            "relative_position_bias(heads, buckets = B, max_distance = M, bidirectional = true)";
        let [heads] = a.positional::<1>(usage)?;
        let heads = self.int(heads, "heads")?;
        let required = |n: &str| {
            a.named(n).ok_or_else(|| {
                Diagnostic::at(
                    e.span,
                    format!("relative_position_bias needs `{n} = ...`"),
                    "missing argument",
                )
                .with_help(usage)
            })
        };
        let bias = RelativeBias {
            buckets: self.int(required("buckets")?, "buckets")?,
            max_distance: self.int(required("max_distance")?, "max_distance")?,
            bidirectional: self.bool(required("bidirectional")?, "bidirectional")?,
        };
        bias.check()
            .map_err(|m| Diagnostic::at(e.span, m, "this bias"))?;
        let table = self.weight(path, vec![bias.buckets as usize, heads as usize], e.span)?;
        self.relative_biases.insert(table, bias);
        Ok(table)
    }

    /// `bias = NAME` of an attention with `heads` query heads: the table and its bucketing.
    fn bias_table(
        &mut self,
        b: &Expr,
        heads: u64,
        scope: &Scope,
        path: &WeightPath,
    ) -> Result<(Value, RelativeBias), Diagnostic> {
        let table = self.tensor(b, scope, path)?;
        let bias = self.relative_biases.get(&table).copied().ok_or_else(|| {
            Diagnostic::at(
                b.span,
                format!("`{b}` is not a relative position bias"),
                "expected a table",
            )
            .with_help("declare it with `let NAME = relative_position_bias(heads, ...)`")
        })?;
        let of = self.graph.value_type(table).shape[1].fixed;
        if of != heads {
            return Err(Diagnostic::at(
                b.span,
                format!("`{b}` holds a bias for {of} heads, the attention has {heads}"),
                "another head count",
            ));
        }
        Ok((table, bias))
    }
}

/// Hugging Face's `rope_type`s that moec implements.
enum RopeKind {
    Default,
    Linear,
    Llama3,
    Yarn,
}
