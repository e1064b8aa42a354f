//! Building an index: tokenize the records into one stream with a separator before each,
//! sort its suffixes with libsais, and write the files under a temporary name; the directory
//! is renamed to the contents' hash when everything is on disk. Building the same records
//! with the same tokenizer gives the same bytes and so the same name.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use libsais::{SuffixArrayConstruction, ThreadCount};

use super::layout::{self, Token};
use super::{
    IndexMeta, FORMAT, META_FILE, OFFSETS_FILE, RECORDS_FILE, SA_FILE, TOKENIZER_FILE, TOKENS_FILE,
    UNIGRAMS_FILE,
};
use crate::attribution::{AttributionError, Tokenizer};
use crate::identity::Address;

/// One record to index.
#[derive(Debug, Clone)]
pub struct Document {
    pub text: String,
    pub record_id: [u8; 32],
    pub contributor: Address,
}

/// Where a build is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildProgress {
    /// Records tokenized so far (of `total`, when the source knows it).
    Tokenizing { records: u64, total: Option<u64> },
    /// Sorting the suffixes of this many token positions.
    Sorting { tokens: u64 },
    /// Suffix-array pointers written.
    Writing { done: u64, total: u64 },
}

/// Records tokenized per call of the tokenizer (it parallelises within a call).
const CHUNK: usize = 4096;

/// Where the index is built from and with what.
pub struct BuildInput<'a, I> {
    pub documents: I,
    /// How many documents there are, for progress, if known.
    pub total: Option<u64>,
    pub tokenizer: &'a Tokenizer,
    pub datanet: Option<String>,
    pub version: Option<u32>,
}

/// Builds an index of `input` under `indexes_dir/<hash>` and returns its metadata. An index
/// with the same contents already there is kept and returned.
pub fn build<I>(
    input: BuildInput<'_, I>,
    indexes_dir: &Path,
    progress: &dyn Fn(BuildProgress),
) -> Result<IndexMeta, AttributionError>
where
    I: Iterator<Item = Result<Document, AttributionError>>,
{
    match layout::token_width(input.tokenizer.vocab_size()) {
        1 => build_width::<u8, I>(input, indexes_dir, progress),
        2 => build_width::<u16, I>(input, indexes_dir, progress),
        _ => build_width::<u32, I>(input, indexes_dir, progress),
    }
}

/// The tokenized corpus, before sorting.
struct Stream<T> {
    tokens: Vec<T>,
    offsets: Vec<u64>,
    records: Vec<u8>,
    unigrams: Vec<u64>,
}

fn tokenize<T: Token, I>(
    input: &mut BuildInput<'_, I>,
    progress: &dyn Fn(BuildProgress),
) -> Result<Stream<T>, AttributionError>
where
    I: Iterator<Item = Result<Document, AttributionError>>,
{
    let vocab = input.tokenizer.vocab_size();
    let mut stream = Stream {
        tokens: Vec::new(),
        offsets: Vec::new(),
        records: Vec::new(),
        unigrams: vec![0u64; vocab as usize],
    };
    let bytes = matches!(input.tokenizer, Tokenizer::Bytes);
    let mut chunk: Vec<Document> = Vec::with_capacity(CHUNK);
    let mut done = 0u64;
    loop {
        chunk.clear();
        for doc in input.documents.by_ref() {
            chunk.push(doc?);
            if chunk.len() == CHUNK {
                break;
            }
        }
        if chunk.is_empty() {
            break;
        }
        let encoded = if bytes {
            None
        } else {
            let texts: Vec<&str> = chunk.iter().map(|d| d.text.as_str()).collect();
            Some(input.tokenizer.encode_batch(&texts)?)
        };
        for (i, doc) in chunk.iter().enumerate() {
            stream.offsets.push(stream.tokens.len() as u64);
            stream.tokens.push(T::SEP);
            let mut push = |id: u32| -> Result<(), AttributionError> {
                let t = T::from_id(id).filter(|_| id < vocab).ok_or_else(|| {
                    AttributionError::Tokenizer(format!(
                        "token id {id} is outside the vocabulary of {vocab}"
                    ))
                })?;
                stream.unigrams[id as usize] += 1;
                stream.tokens.push(t);
                Ok(())
            };
            match &encoded {
                None => doc.text.bytes().try_for_each(|b| push(u32::from(b)))?,
                Some(all) => all[i].iter().try_for_each(|&id| push(id))?,
            }
            stream.records.extend_from_slice(&doc.record_id);
            stream.records.extend_from_slice(&doc.contributor.0);
        }
        done += chunk.len() as u64;
        progress(BuildProgress::Tokenizing {
            records: done,
            total: input.total,
        });
    }
    stream.offsets.push(stream.tokens.len() as u64);
    Ok(stream)
}

/// The suffix array of `tokens` (libsais, on every core).
fn suffix_array<T: Token>(tokens: &[T], vocab: u32) -> Result<Vec<i32>, AttributionError> {
    let failed = |e: libsais::LibsaisError| AttributionError::index("(building)", format!("{e:?}"));
    let threads = ThreadCount::openmp_default();
    match T::WIDTH {
        1 => SuffixArrayConstruction::for_text(bytemuck::cast_slice::<T, u8>(tokens))
            .in_owned_buffer32()
            .multi_threaded(threads)
            .run()
            .map(|r| r.into_vec())
            .map_err(failed),
        2 => SuffixArrayConstruction::for_text(bytemuck::cast_slice::<T, u16>(tokens))
            .in_owned_buffer32()
            .multi_threaded(threads)
            .run()
            .map(|r| r.into_vec())
            .map_err(failed),
        _ => {
            // libsais sorts integer texts over 0..k; the separator becomes k - 1, above every
            // id as it is in the stored stream, so the order is the same.
            let mut text: Vec<i32> = bytemuck::cast_slice::<T, u32>(tokens)
                .iter()
                .map(|&t| {
                    if t == u32::MAX {
                        vocab as i32
                    } else {
                        t as i32
                    }
                })
                .collect();
            SuffixArrayConstruction::for_text_mut(&mut text)
                .in_owned_buffer32()
                .multi_threaded(threads)
                .run()
                .map(|r| r.into_vec())
                .map_err(failed)
        }
    }
}

/// A file being written and hashed.
struct Hashed {
    writer: BufWriter<File>,
    hasher: blake3::Hasher,
}

impl Hashed {
    fn create(path: &Path) -> Result<Self, AttributionError> {
        Ok(Self {
            writer: BufWriter::with_capacity(1 << 20, File::create(path)?),
            hasher: blake3::Hasher::new(),
        })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), AttributionError> {
        self.hasher.update(bytes);
        self.writer.write_all(bytes)?;
        Ok(())
    }

    fn finish(self) -> Result<[u8; 32], AttributionError> {
        let file = self.writer.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(*self.hasher.finalize().as_bytes())
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<[u8; 32], AttributionError> {
    let mut f = Hashed::create(path)?;
    f.write(bytes)?;
    f.finish()
}

fn build_width<T: Token, I>(
    mut input: BuildInput<'_, I>,
    indexes_dir: &Path,
    progress: &dyn Fn(BuildProgress),
) -> Result<IndexMeta, AttributionError>
where
    I: Iterator<Item = Result<Document, AttributionError>>,
{
    let stream = tokenize::<T, I>(&mut input, progress)?;
    let n = stream.tokens.len() as u64;
    if n >= i32::MAX as u64 {
        return Err(AttributionError::invalid(
            "corpus",
            format!("{n} tokens; one index holds fewer than 2^31 (shard the version)"),
        ));
    }
    std::fs::create_dir_all(indexes_dir)?;
    let tmp = tempfile::Builder::new()
        .prefix(".building-")
        .tempdir_in(indexes_dir)?;
    let dir = tmp.path();
    let vocab = input.tokenizer.vocab_size();

    // Files first that free memory before the sort needs it.
    let records_hash = write_file(&dir.join(RECORDS_FILE), &stream.records)?;
    let offsets: Vec<u8> = stream
        .offsets
        .iter()
        .flat_map(|o| o.to_le_bytes())
        .collect();
    let offsets_hash = write_file(&dir.join(OFFSETS_FILE), &offsets)?;
    let unigrams: Vec<u8> = stream
        .unigrams
        .iter()
        .flat_map(|c| c.to_le_bytes())
        .collect();
    let unigrams_hash = write_file(&dir.join(UNIGRAMS_FILE), &unigrams)?;
    let text_tokens = n - stream.offsets.len().saturating_sub(1) as u64;
    let records = stream.offsets.len().saturating_sub(1) as u64;
    drop((stream.records, stream.offsets, offsets, unigrams));
    let tokens_hash = write_file(&dir.join(TOKENS_FILE), bytemuck::cast_slice(&stream.tokens))?;

    progress(BuildProgress::Sorting { tokens: n });
    let sa = suffix_array(&stream.tokens, vocab)?;
    drop(stream.tokens);

    let width = layout::pointer_width(n);
    let mut file = Hashed::create(&dir.join(SA_FILE))?;
    let step = 1 << 20;
    let mut packed = Vec::with_capacity(step * usize::from(width));
    for (i, chunk) in sa.chunks(step).enumerate() {
        packed.clear();
        for &p in chunk {
            packed.extend_from_slice(&(p as u64).to_le_bytes()[..usize::from(width)]);
        }
        file.write(&packed)?;
        progress(BuildProgress::Writing {
            done: (i * step + chunk.len()) as u64,
            total: n,
        });
    }
    file.write(&[0; layout::POINTER_PADDING])?;
    let sa_hash = file.finish()?;
    drop(sa);

    let tokenizer_hash = hex::encode(input.tokenizer.hash());
    if let Some(json) = input.tokenizer.json() {
        write_file(&dir.join(TOKENIZER_FILE), json.as_bytes())?;
    }
    let mut meta = IndexMeta {
        format: FORMAT,
        hash: String::new(),
        datanet: input.datanet.take(),
        version: input.version,
        tokenizer: input.tokenizer.kind().to_string(),
        tokenizer_hash,
        vocab_size: vocab,
        token_width: T::WIDTH,
        pointer_width: width,
        tokens: n,
        records,
        text_tokens,
    };
    meta.hash = content_hash(
        &meta,
        &[
            tokens_hash,
            sa_hash,
            offsets_hash,
            records_hash,
            unigrams_hash,
        ],
    )?;
    let json = serde_json::to_vec_pretty(&meta)
        .map_err(|e| AttributionError::index(&meta.hash, e.to_string()))?;
    write_file(&dir.join(META_FILE), &json)?;

    let target = indexes_dir.join(&meta.hash);
    if target.join(META_FILE).exists() {
        // Built before: the same contents under the same name.
        return Ok(meta);
    }
    let kept = tmp.keep();
    std::fs::rename(&kept, &target).inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&kept);
    })?;
    Ok(meta)
}

/// BLAKE3 over the metadata (without its hash) and each file's hash, in a fixed order.
pub(crate) fn content_hash(
    meta: &IndexMeta,
    files: &[[u8; 32]],
) -> Result<String, AttributionError> {
    let mut unnamed = meta.clone();
    unnamed.hash = String::new();
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"tributary:span-index:1\0");
    hasher.update(
        &serde_json::to_vec(&unnamed).map_err(|e| AttributionError::index("(building)", e))?,
    );
    for h in files {
        hasher.update(h);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

#[cfg(test)]
pub(crate) fn suffix_array_for_test(tokens: &[u32], vocab: u32) -> Vec<i32> {
    suffix_array(tokens, vocab).expect("sort")
}
