//! What `moec generate` and the executables of `moec build` do with a whole model,
//! once their options are parsed: read the checkpoint directory's `tokenizer.json`
//! (needed for a text prompt, used for the output when present) and end-of-sequence
//! ids, open the model (only then: a bad prompt costs no loading), run
//! [`generate`](super::generate), and stream the new tokens to `out` as they come —
//! their text, or their ids when there is no tokenizer — with a summary line on
//! stderr; or, with `json`, one JSON line on `out` at the end and no summary.

use super::{
    eos_ids, generate, BoxError, Decoder, GenerateOptions, Generated, Sampling, TextStream,
    Tokenizer, TokenizerError,
};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The prompt as given.
pub enum Prompt {
    Text(String),
    Ids(Vec<i32>),
}

/// A generation request: what the command line asked for.
pub struct Request {
    /// The checkpoint: a directory, or a weights file standing for the directory holding it.
    pub weights: PathBuf,
    pub prompt: Prompt,
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    pub json: bool,
}

/// Runs `request` on the model `open` makes, writing to `out` (see the module doc).
pub fn run(
    request: &Request,
    open: impl FnOnce() -> Result<Box<dyn Decoder>, String>,
    out: &mut dyn Write,
) -> Result<Generated, String> {
    let dir = checkpoint_dir(&request.weights)?;
    let (tokenizer, prompt_ids) = match (Tokenizer::from_dir(&dir), &request.prompt) {
        (Ok(tokenizer), Prompt::Text(text)) => {
            let ids = tokenizer.encode(text).map_err(|e| e.to_string())?;
            (Some(tokenizer), ids)
        }
        (Ok(tokenizer), Prompt::Ids(ids)) => (Some(tokenizer), ids.clone()),
        (Err(TokenizerError::Missing { .. }), Prompt::Ids(ids)) => (None, ids.clone()),
        (Err(e @ TokenizerError::Missing { .. }), Prompt::Text(_)) => {
            return Err(format!(
                "{e}; pass the prompt as token ids instead: --prompt-ids 1,2,3"
            ))
        }
        (Err(e), _) => return Err(e.to_string()),
    };
    let opts = GenerateOptions {
        max_new_tokens: request.max_new_tokens,
        sampling: request.sampling.clone(),
        eos_ids: eos_ids(&dir).map_err(|e| e.to_string())?,
    };
    let mut decoder = open()?;
    let generated = stream(
        decoder.as_mut(),
        &prompt_ids,
        &opts,
        tokenizer.as_ref(),
        request.json,
        out,
    )?;
    if !request.json {
        eprintln!("{}", summary(&generated));
    }
    Ok(generated)
}

/// Generates, writing the new tokens to `out` as they come (or, with `json`, one line at the end).
fn stream(
    decoder: &mut dyn Decoder,
    prompt_ids: &[i32],
    opts: &GenerateOptions,
    tokenizer: Option<&Tokenizer>,
    json: bool,
    out: &mut dyn Write,
) -> Result<Generated, String> {
    let mut output = Output::new(tokenizer, json);
    let mut written = false;
    let generated = generate(decoder, prompt_ids, opts, &mut |id| {
        written = true;
        output.token(id, out)
    });
    let generated = generated.map_err(|e| {
        // End the text cut short, so the message that follows starts a line.
        if written && !json {
            let _ = writeln!(out);
        }
        e.to_string()
    })?;
    output.finish(&generated, out).map_err(|e| e.to_string())?;
    Ok(generated)
}

/// `--prompt TEXT` or `--prompt-ids IDS`, exactly one.
pub fn prompt(text: Option<String>, ids: Option<&str>) -> Result<Prompt, String> {
    match (text, ids) {
        (Some(text), None) => Ok(Prompt::Text(text)),
        (None, Some(ids)) => parse_ids(ids).map(Prompt::Ids),
        (Some(_), Some(_)) => Err("give the prompt once: --prompt TEXT or --prompt-ids IDS".into()),
        (None, None) => Err("no prompt: give --prompt TEXT or --prompt-ids 1,2,3".into()),
    }
}

/// Greedy, or sampled with a temperature; the settings checked. Top-k and top-p
/// without a temperature are an error rather than a silent temperature of 1.
pub fn sampling(
    temperature: Option<f32>,
    top_k: Option<usize>,
    top_p: Option<f32>,
    seed: u64,
) -> Result<Sampling, String> {
    let sampling = match temperature {
        None if top_k.is_some() || top_p.is_some() => {
            return Err(
                "--top-k and --top-p shape sampling: give --temperature T as well \
                        (without it, decoding is greedy)"
                    .into(),
            )
        }
        None => Sampling::Greedy,
        Some(temperature) => Sampling::Sample {
            temperature,
            top_k,
            top_p,
            seed,
        },
    };
    sampling.validate().map_err(|e| e.to_string())?;
    Ok(sampling)
}

/// `1,2,3` (spaces allowed around the ids; no negative ids).
pub fn parse_ids(text: &str) -> Result<Vec<i32>, String> {
    text.split(',')
        .map(|id| {
            (id.trim().parse::<i32>().ok())
                .filter(|&id| id >= 0)
                .ok_or_else(|| {
                    format!(
                        "--prompt-ids: expected token ids (0 or more) separated by commas, like \
                         1,2,3; found `{text}`"
                    )
                })
        })
        .collect()
}

/// The directory `--weights` names, or the one holding the file it names.
fn checkpoint_dir(weights: &Path) -> Result<PathBuf, String> {
    match std::fs::metadata(weights) {
        Ok(m) if m.is_dir() => Ok(weights.to_path_buf()),
        Ok(_) => Ok(weights
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)),
        Err(e) => Err(format!("{}: {e}", weights.display())),
    }
}

/// Where the new tokens go as they come.
enum Output<'t> {
    /// Their text, piece by piece.
    Text(TextStream<'t>),
    /// Their ids, space-separated (no tokenizer).
    Ids { written: usize },
    /// Nothing until the end (`--json`).
    Json(Option<&'t Tokenizer>),
}

impl<'t> Output<'t> {
    fn new(tokenizer: Option<&'t Tokenizer>, json: bool) -> Output<'t> {
        match tokenizer {
            _ if json => Output::Json(tokenizer),
            Some(tokenizer) => Output::Text(TextStream::new(tokenizer)),
            None => Output::Ids { written: 0 },
        }
    }

    fn token(&mut self, id: i32, out: &mut dyn Write) -> Result<(), BoxError> {
        match self {
            Output::Text(stream) => write!(out, "{}", stream.push(id)?)?,
            Output::Ids { written } => {
                write!(out, "{}{id}", if *written == 0 { "" } else { " " })?;
                *written += 1;
            }
            Output::Json(_) => return Ok(()),
        }
        out.flush()?;
        Ok(())
    }

    /// Ends the text (what the stream held back, a newline) or prints the JSON line.
    fn finish(self, generated: &Generated, out: &mut dyn Write) -> Result<(), BoxError> {
        match self {
            Output::Text(stream) => writeln!(out, "{}", stream.finish()?)?,
            Output::Ids { .. } => writeln!(out)?,
            Output::Json(tokenizer) => {
                let text = match tokenizer {
                    Some(tokenizer) => Some(tokenizer.decode(&generated.ids)?),
                    None => None,
                };
                writeln!(out, "{}", json_line(generated, text.as_deref()))?;
            }
        }
        out.flush()?;
        Ok(())
    }
}

/// `{"ids": [...], "text": ..., "prefill_tokens_per_s": ..., "decode_tokens_per_s": ...,
/// "prompt_tokens": N, "stop": "..."}`, in that order.
fn json_line(g: &Generated, text: Option<&str>) -> String {
    let rate = |r: Option<f64>| r.map_or_else(|| "null".to_string(), |r| format!("{r:.3}"));
    let ids = serde_json::Value::from(g.ids.clone());
    let text = serde_json::Value::from(text);
    format!(
        "{{\"ids\":{ids},\"text\":{text},\"prefill_tokens_per_s\":{},\"decode_tokens_per_s\":{},\
         \"prompt_tokens\":{},\"stop\":\"{}\"}}",
        rate(g.prefill_tokens_per_s()),
        rate(g.decode_tokens_per_s()),
        g.prompt_tokens,
        g.stop.name()
    )
}

/// `prompt 11 tokens, 8 new; prefill 950.2 tok/s, decode 61.3 tok/s; stopped: end of sequence`.
fn summary(g: &Generated) -> String {
    let rate = |r: Option<f64>| r.map_or_else(|| "-".to_string(), |r| format!("{r:.1}"));
    format!(
        "prompt {} tokens, {} new; prefill {} tok/s, decode {} tok/s; stopped: {}",
        g.prompt_tokens,
        g.ids.len(),
        rate(g.prefill_tokens_per_s()),
        rate(g.decode_tokens_per_s()),
        g.stop
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::StopReason;

    /// Counts up: the next id is the last plus one. Fails running position `.1` on.
    struct CountUp(usize, usize);

    impl Decoder for CountUp {
        fn vocab_size(&self) -> usize {
            4
        }
        fn max_positions(&self) -> usize {
            16
        }
        fn position(&self) -> usize {
            self.0
        }
        fn reset(&mut self) {
            self.0 = 0;
        }
        fn forward(&mut self, ids: &[i32]) -> Result<Vec<f32>, BoxError> {
            if self.0 + ids.len() > self.1 {
                return Err("out of memory".into());
            }
            self.0 += ids.len();
            let mut logits = vec![0.0; 4];
            let last = ids.last().ok_or("no ids")?;
            logits[(*last as usize + 1) % 4] = 1.0;
            Ok(logits)
        }
    }

    /// Words `a`, `b`, `c` (ids 1 to 3), joined by spaces.
    fn words() -> (tempfile::TempDir, Tokenizer) {
        let dir = tempfile::tempdir().unwrap();
        let json = r#"{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
            "decoder": null, "model": {"type": "WordLevel", "unk_token": "<unk>",
            "vocab": {"<unk>": 0, "a": 1, "b": 2, "c": 3}}}"#;
        std::fs::write(dir.path().join("tokenizer.json"), json).unwrap();
        let tokenizer = Tokenizer::from_dir(dir.path()).unwrap();
        (dir, tokenizer)
    }

    fn greedy(eos_ids: &[i32]) -> GenerateOptions {
        GenerateOptions {
            max_new_tokens: 8,
            sampling: Sampling::Greedy,
            eos_ids: eos_ids.to_vec(),
        }
    }

    /// Greedy from `a` until `c`: what goes to stdout.
    fn output(tokenizer: Option<&Tokenizer>, json: bool) -> (Generated, String) {
        let mut out = Vec::new();
        let g = stream(
            &mut CountUp(0, 16),
            &[1],
            &greedy(&[3]),
            tokenizer,
            json,
            &mut out,
        );
        (g.unwrap(), String::from_utf8(out).unwrap())
    }

    #[test]
    fn text_streams_through_the_tokenizer() {
        let (_dir, tokenizer) = words();
        let (g, out) = output(Some(&tokenizer), false);
        assert_eq!(
            (g.ids.as_slice(), g.stop),
            ([2, 3].as_slice(), StopReason::Eos)
        );
        assert_eq!(out, "b c\n");
    }

    #[test]
    fn without_a_tokenizer_ids_stream_space_separated() {
        assert_eq!(output(None, false).1, "2 3\n");
    }

    #[test]
    fn json_is_one_line_in_order() {
        let (_dir, tokenizer) = words();
        let out = output(Some(&tokenizer), true).1;
        assert!(out.starts_with(r#"{"ids":[2,3],"text":"b c","prefill_tokens_per_s":"#));
        assert!(
            out.ends_with(",\"prompt_tokens\":1,\"stop\":\"eos\"}\n"),
            "{out}"
        );
        let line: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(line["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
        let out = output(None, true).1;
        let line: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(line["text"].is_null());
    }

    #[test]
    fn text_cut_short_by_an_error_ends_its_line() {
        let mut out = Vec::new();
        let e = stream(
            &mut CountUp(0, 2),
            &[1],
            &greedy(&[]),
            None,
            false,
            &mut out,
        );
        assert_eq!(
            e.unwrap_err(),
            "running the model at position 2: out of memory"
        );
        assert_eq!(String::from_utf8(out).unwrap(), "2 3\n");
    }

    #[test]
    fn prompt_ids_parse() {
        assert_eq!(parse_ids("1,2, 3").unwrap(), [1, 2, 3]);
        for bad in ["", "1,,2", "1;2", "-1", "1.5", "99999999999"] {
            assert!(
                parse_ids(bad).unwrap_err().contains("--prompt-ids"),
                "{bad}"
            );
        }
    }
}
