//! The generation loop: check the prompt against the model, empty the model's cache, run the whole
//! prompt in one `forward` (prefill), then choose a token from the last row of logits and run it
//! alone (decode), until an end-of-sequence id, `max_new_tokens`, or the model's position limit.
//!
//! The sequence — prompt and new tokens — never grows past `max_positions()`, like transformers'
//! `max_length`, and the last token chosen is never run (nothing reads its logits). Timings cover
//! the model and the sampler, not `on_token`; each new token is handed to `on_token` as soon as it
//! is chosen. Tokenizers and files are not this module's business.

use std::error::Error;
use std::fmt;
use std::time::{Duration, Instant};

use super::sample::{Sampler, Sampling, SamplingError};
use super::{BoxError, Decoder};

/// What to generate and when to stop.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// At most this many new tokens.
    pub max_new_tokens: usize,
    /// How each new token is chosen.
    pub sampling: Sampling,
    /// Generation ends after any of these ids (which is kept as the last new id).
    pub eos_ids: Vec<i32>,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The last new id is one of `eos_ids`.
    Eos,
    /// `max_new_tokens` new ids.
    MaxNewTokens,
    /// The sequence holds `max_positions()` ids.
    PositionLimit,
}

impl StopReason {
    /// `eos`, `max_new_tokens` or `position_limit`.
    pub fn name(self) -> &'static str {
        match self {
            StopReason::Eos => "eos",
            StopReason::MaxNewTokens => "max_new_tokens",
            StopReason::PositionLimit => "position_limit",
        }
    }
}

/// The new tokens and how long they took.
#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    /// The new ids only (an end-of-sequence id included), in order.
    pub ids: Vec<i32>,
    pub prompt_tokens: usize,
    /// Running the prompt and choosing the first new id (0 when there was none to choose).
    pub prefill_secs: f64,
    /// Running each later new id's predecessor and choosing it.
    pub decode_secs: f64,
    pub stop: StopReason,
}

impl Generated {
    /// Prompt tokens per second of prefill; `None` when no prefill ran.
    pub fn prefill_tokens_per_s(&self) -> Option<f64> {
        rate(self.prompt_tokens, self.prefill_secs)
    }

    /// New tokens per second after the first; `None` when there was at most one.
    pub fn decode_tokens_per_s(&self) -> Option<f64> {
        rate(self.ids.len().saturating_sub(1), self.decode_secs)
    }
}

fn rate(tokens: usize, secs: f64) -> Option<f64> {
    (tokens > 0 && secs > 0.0).then(|| tokens as f64 / secs)
}

/// Why generation could not start or could not go on.
#[derive(Debug)]
pub enum GenerateError {
    EmptyPrompt,
    /// The prompt is longer than the model's positions.
    PromptTooLong {
        tokens: usize,
        max_positions: usize,
    },
    /// A prompt id outside `0..vocab_size`.
    TokenOutOfRange {
        id: i32,
        index: usize,
        vocab_size: usize,
    },
    /// A bad sampling setting or an unusable row of logits.
    Sampling(SamplingError),
    /// The model failed running the ids from `position` on.
    Forward {
        position: usize,
        source: BoxError,
    },
    /// The model returned a logits buffer of the wrong length.
    LogitsLength {
        vocab_size: usize,
        found: usize,
    },
    /// `on_token` failed (writing out a token, say).
    OnToken(BoxError),
}

/// Generates from `prompt` with `decoder` (whose cache is emptied first), handing each new id to
/// `on_token` as it is chosen.
pub fn generate(
    decoder: &mut dyn Decoder,
    prompt: &[i32],
    opts: &GenerateOptions,
    on_token: &mut dyn FnMut(i32) -> Result<(), BoxError>,
) -> Result<Generated, GenerateError> {
    check_prompt(decoder, prompt)?;
    let mut sampler = Sampler::new(opts.sampling.clone()).map_err(GenerateError::Sampling)?;
    decoder.reset();
    let max_positions = decoder.max_positions();
    let mut ids = Vec::new();
    let (mut prefill, mut decode) = (Duration::ZERO, Duration::ZERO);
    // Some(stop) once no new token may be added: checked before the prefill and after each token.
    let limit = |new: usize| {
        if new >= opts.max_new_tokens {
            Some(StopReason::MaxNewTokens)
        } else if prompt.len() + new >= max_positions {
            Some(StopReason::PositionLimit)
        } else {
            None
        }
    };
    if let Some(stop) = limit(0) {
        return Ok(Generated {
            ids,
            prompt_tokens: prompt.len(),
            prefill_secs: 0.0,
            decode_secs: 0.0,
            stop,
        });
    }
    let mut step = prompt.to_vec();
    let stop = loop {
        let start = Instant::now();
        let logits = forward(decoder, &step)?;
        let next = sampler.next(&logits);
        *(if ids.is_empty() {
            &mut prefill
        } else {
            &mut decode
        }) += start.elapsed();
        let token = next.map_err(GenerateError::Sampling)?;
        ids.push(token);
        on_token(token).map_err(GenerateError::OnToken)?;
        if opts.eos_ids.contains(&token) {
            break StopReason::Eos;
        }
        if let Some(stop) = limit(ids.len()) {
            break stop;
        }
        step = vec![token];
    };
    Ok(Generated {
        ids,
        prompt_tokens: prompt.len(),
        prefill_secs: prefill.as_secs_f64(),
        decode_secs: decode.as_secs_f64(),
        stop,
    })
}

/// A non-empty prompt that fits the model, of ids in its vocabulary.
fn check_prompt(decoder: &dyn Decoder, prompt: &[i32]) -> Result<(), GenerateError> {
    if prompt.is_empty() {
        return Err(GenerateError::EmptyPrompt);
    }
    if prompt.len() > decoder.max_positions() {
        return Err(GenerateError::PromptTooLong {
            tokens: prompt.len(),
            max_positions: decoder.max_positions(),
        });
    }
    let vocab_size = decoder.vocab_size();
    match prompt
        .iter()
        .position(|&id| usize::try_from(id).map_or(true, |id| id >= vocab_size))
    {
        Some(index) => Err(GenerateError::TokenOutOfRange {
            id: prompt[index],
            index,
            vocab_size,
        }),
        None => Ok(()),
    }
}

/// Runs `ids` as the next positions, checking the length of what comes back.
fn forward(decoder: &mut dyn Decoder, ids: &[i32]) -> Result<Vec<f32>, GenerateError> {
    let position = decoder.position();
    let logits = decoder
        .forward(ids)
        .map_err(|source| GenerateError::Forward { position, source })?;
    let vocab_size = decoder.vocab_size();
    if logits.len() != vocab_size {
        return Err(GenerateError::LogitsLength {
            vocab_size,
            found: logits.len(),
        });
    }
    Ok(logits)
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StopReason::Eos => "end of sequence",
            StopReason::MaxNewTokens => "max new tokens",
            StopReason::PositionLimit => "position limit",
        })
    }
}

impl fmt::Display for GenerateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GenerateError::EmptyPrompt => write!(f, "the prompt has no tokens"),
            GenerateError::PromptTooLong {
                tokens,
                max_positions,
            } => write!(
                f,
                "the prompt has {tokens} tokens; this model holds at most {max_positions} \
                 positions (max_position_embeddings)"
            ),
            GenerateError::TokenOutOfRange {
                id,
                index,
                vocab_size,
            } => write!(
                f,
                "prompt token {index} is id {id}, outside the model's vocabulary of \
                 {vocab_size} ids (0..{vocab_size})"
            ),
            GenerateError::Sampling(e) => write!(f, "{e}"),
            GenerateError::Forward { position, source } => {
                write!(f, "running the model at position {position}: {source}")
            }
            GenerateError::LogitsLength { vocab_size, found } => write!(
                f,
                "the model returned {found} logits for the last token of a {vocab_size}-id \
                 vocabulary (expected {vocab_size})"
            ),
            GenerateError::OnToken(e) => write!(f, "{e}"),
        }
    }
}

impl Error for GenerateError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            GenerateError::Sampling(e) => Some(e),
            GenerateError::Forward { source, .. } | GenerateError::OnToken(source) => {
                Some(source.as_ref())
            }
            _ => None,
        }
    }
}
