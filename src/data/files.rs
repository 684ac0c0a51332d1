//! Point sets from user files: CSV (header optional, comma/whitespace separated) and NumPy
//! `.npy` (f32 or f64, little-endian, C order, 1-D or 2-D). Writers for both.

use std::io::Write;
use std::path::Path;

use crate::{EmError, Points, Result};

fn parse_err(path: &Path, reason: impl Into<String>) -> EmError {
    EmError::Parse {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads points from `.csv` or `.npy` (chosen by extension), checking that every value is finite.
pub fn read_points(path: &Path) -> Result<Points> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let pts = match ext.as_str() {
        "npy" => read_npy(path)?,
        "csv" | "txt" | "tsv" => read_csv(path)?,
        _ => {
            return Err(parse_err(
                path,
                format!("expected a .csv or .npy file, found extension `{ext}`"),
            ))
        }
    };
    pts.check_finite(&path.display().to_string())?;
    Ok(pts)
}

/// Writes points as `.csv` or `.npy` (chosen by extension; f32 for .npy).
pub fn write_points(path: &Path, pts: &Points) -> Result<()> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let bytes = match ext.as_str() {
        "npy" => npy_bytes(pts),
        "csv" => csv_bytes(pts),
        _ => {
            return Err(EmError::invalid(
                "output file",
                "a path ending in .npy or .csv",
                path.display(),
            ))
        }
    };
    crate::checkpoint::write_atomic(path, &bytes)
}

/// CSV: one point per line; a first line with any non-numeric field is a header.
pub fn read_csv(path: &Path) -> Result<Points> {
    let text = std::fs::read_to_string(path).map_err(|e| EmError::io(path, e))?;
    let mut data = Vec::new();
    let mut dim = None;
    let mut n = 0;
    for (lineno, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line
            .split([',', ';', '\t', ' '])
            .filter(|f| !f.is_empty())
            .collect();
        let parsed: std::result::Result<Vec<f64>, _> = fields
            .iter()
            .map(|f| f.trim().trim_matches('"').parse::<f64>())
            .collect();
        let values = match parsed {
            Ok(v) => v,
            Err(_) if n == 0 && dim.is_none() => continue, // header
            Err(_) => {
                let bad = fields
                    .iter()
                    .find(|f| f.trim().trim_matches('"').parse::<f64>().is_err());
                return Err(parse_err(
                    path,
                    format!(
                        "line {}: expected numbers, found `{}`",
                        lineno + 1,
                        bad.unwrap_or(&"")
                    ),
                ));
            }
        };
        match dim {
            None => dim = Some(values.len()),
            Some(d) if d != values.len() => {
                return Err(parse_err(
                    path,
                    format!(
                        "line {}: expected {d} columns like the first row, found {}",
                        lineno + 1,
                        values.len()
                    ),
                ))
            }
            _ => {}
        }
        data.extend(values.into_iter().map(|v| v as f32));
        n += 1;
    }
    let dim =
        dim.ok_or_else(|| parse_err(path, "expected at least one row of numbers, found none"))?;
    Points::new(n, dim, data)
}

fn csv_bytes(pts: &Points) -> Vec<u8> {
    let mut s = String::new();
    let header: Vec<String> = (0..pts.dim()).map(|k| format!("x{k}")).collect();
    s.push_str(&header.join(","));
    s.push('\n');
    for r in pts.rows() {
        let row: Vec<String> = r.iter().map(|v| format!("{v}")).collect();
        s.push_str(&row.join(","));
        s.push('\n');
    }
    s.into_bytes()
}

/// NPY version 1/2/3 reader for `<f4`/`<f8`, C order, shape `(n, d)` or `(n,)`.
pub fn read_npy(path: &Path) -> Result<Points> {
    let bytes = std::fs::read(path).map_err(|e| EmError::io(path, e))?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(parse_err(
            path,
            "expected the NPY magic `\\x93NUMPY`, found other bytes",
        ));
    }
    let major = bytes[6];
    let (hlen, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(parse_err(path, format!("unsupported NPY version {major}"))),
    };
    let header = bytes
        .get(start..start + hlen)
        .ok_or_else(|| parse_err(path, "truncated NPY header"))?;
    let header = String::from_utf8_lossy(header);
    let field = |key: &str| -> Option<String> {
        let i = header.find(&format!("'{key}'"))?;
        let rest = &header[i + key.len() + 2..];
        let rest = rest.trim_start().strip_prefix(':')?.trim_start();
        Some(rest.to_string())
    };
    let descr = field("descr").ok_or_else(|| parse_err(path, "NPY header lacks 'descr'"))?;
    let width = if descr.starts_with("'<f4'") || descr.starts_with("'float32'") {
        4
    } else if descr.starts_with("'<f8'") || descr.starts_with("'float64'") {
        8
    } else {
        let d: String = descr.chars().take_while(|&c| c != ',').collect();
        return Err(parse_err(
            path,
            format!("expected dtype '<f4' or '<f8', found {d}"),
        ));
    };
    let fortran = field("fortran_order")
        .ok_or_else(|| parse_err(path, "NPY header lacks 'fortran_order'"))?;
    if fortran.starts_with("True") {
        return Err(parse_err(
            path,
            "expected C order (fortran_order False), found Fortran order",
        ));
    }
    let shape_s = field("shape").ok_or_else(|| parse_err(path, "NPY header lacks 'shape'"))?;
    let inner: String = shape_s
        .trim_start_matches('(')
        .chars()
        .take_while(|&c| c != ')')
        .collect();
    let dims: std::result::Result<Vec<usize>, _> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::parse::<usize>)
        .collect();
    let dims = dims.map_err(|_| parse_err(path, format!("cannot read shape ({inner})")))?;
    let (n, d) = match dims.as_slice() {
        [n] => (*n, 1),
        [n, d] => (*n, *d),
        other => {
            return Err(parse_err(
                path,
                format!("expected a 1-D or 2-D array, found shape {other:?}"),
            ))
        }
    };
    let body = &bytes[start + hlen..];
    if body.len() != n * d * width {
        return Err(parse_err(
            path,
            format!(
                "expected {} data bytes for shape ({n}, {d}), found {}",
                n * d * width,
                body.len()
            ),
        ));
    }
    let data: Vec<f32> = if width == 4 {
        body.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else {
        body.chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect()
    };
    Points::new(n, d, data)
}

fn npy_bytes(pts: &Points) -> Vec<u8> {
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}",
        pts.len(),
        pts.dim()
    );
    // pad so that magic(6)+version(2)+len(2)+header is a multiple of 64, ending in '\n'
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + pts.as_slice().len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in pts.as_slice() {
        out.write_all(&v.to_le_bytes())
            .expect("writing to a Vec cannot fail");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn npy_and_csv_round_trip() {
        let d = tmp();
        let p = Points::new(3, 2, vec![1.5, -2.0, 0.0, 3.25, 1e-3, 7.0]).unwrap();
        for name in ["a.npy", "a.csv"] {
            let f = d.path().join(name);
            write_points(&f, &p).unwrap();
            assert_eq!(read_points(&f).unwrap(), p, "{name}");
        }
    }

    #[test]
    fn reads_f64_npy_and_headerless_csv() {
        let d = tmp();
        let f = d.path().join("b.npy");
        let mut header = "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }".to_string();
        header.push_str(&" ".repeat(64 - (10 + header.len() + 1) % 64));
        header.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((header.len() as u16).to_le_bytes());
        bytes.extend(header.as_bytes());
        bytes.extend(2.5f64.to_le_bytes());
        bytes.extend((-1.0f64).to_le_bytes());
        std::fs::write(&f, bytes).unwrap();
        let p = read_points(&f).unwrap();
        assert_eq!((p.len(), p.dim()), (2, 1));
        assert_eq!(p.as_slice(), &[2.5, -1.0]);
        let c = d.path().join("c.csv");
        std::fs::write(&c, "1 2 3\n4 5 6\n").unwrap();
        assert_eq!(read_points(&c).unwrap().dim(), 3);
    }

    #[test]
    fn malformed_inputs_give_clear_errors() {
        let d = tmp();
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "ragged.csv",
                b"x,y\n1,2\n3\n".to_vec(),
                "expected 2 columns",
            ),
            (
                "text.csv",
                b"1,2\n3,abc\n".to_vec(),
                "line 2: expected numbers, found `abc`",
            ),
            ("empty.csv", b"x,y\n".to_vec(), "found none"),
            ("nan.csv", b"1,2\nnan,3\n".to_vec(), "row 1, column 0"),
            ("magic.npy", b"not an npy file".to_vec(), "NPY magic"),
            (
                "int.npy",
                npy_with("'<i8'", "(1,)", &[0u8; 8]),
                "expected dtype '<f4' or '<f8'",
            ),
            (
                "short.npy",
                npy_with("'<f4'", "(3, 2)", &[0u8; 8]),
                "expected 24 data bytes",
            ),
            (
                "f.npy",
                npy_with_order("'<f4'", "True", "(1,)", &[0u8; 4]),
                "Fortran order",
            ),
            ("x.bin", b"".to_vec(), "expected a .csv or .npy file"),
        ];
        for (name, bytes, want) in cases {
            let f = d.path().join(name);
            std::fs::write(&f, bytes).unwrap();
            let e = read_points(&f).unwrap_err().to_string();
            assert!(e.contains(want), "{name}: {e}");
        }
        let e = read_points(&d.path().join("missing.csv"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.csv"), "{e}");
    }

    fn npy_with(descr: &str, shape: &str, body: &[u8]) -> Vec<u8> {
        npy_with_order(descr, "False", shape, body)
    }

    fn npy_with_order(descr: &str, order: &str, shape: &str, body: &[u8]) -> Vec<u8> {
        let header =
            format!("{{'descr': {descr}, 'fortran_order': {order}, 'shape': {shape}, }}\n");
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend((header.len() as u16).to_le_bytes());
        b.extend(header.as_bytes());
        b.extend(body);
        b
    }
}
