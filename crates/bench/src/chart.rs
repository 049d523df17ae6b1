//! Horizontal bar charts written as PNG without any dependency: an RGB canvas, a built-in 5×7
//! pixel font (upper case, digits, a little punctuation), and a PNG encoder (Sub-filtered rows,
//! fixed-Huffman deflate with run-length matches, which suits flat chart colours).
//!
//! A chart library would pull in an image stack and system fonts; a benchmark chart needs
//! neither.

/// An RGB colour.
pub type Rgb = [u8; 3];

/// A drawing surface.
pub struct Canvas {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

impl Canvas {
    /// A white canvas.
    pub fn new(width: usize, height: usize) -> Canvas {
        Canvas {
            width,
            height,
            pixels: vec![255; width * height * 3],
        }
    }

    /// Fills a rectangle (clipped to the canvas).
    pub fn rect(&mut self, x: usize, y: usize, w: usize, h: usize, c: Rgb) {
        for yy in y..(y + h).min(self.height) {
            for xx in x..(x + w).min(self.width) {
                let i = (yy * self.width + xx) * 3;
                self.pixels[i..i + 3].copy_from_slice(&c);
            }
        }
    }

    /// Draws `text` (upper-cased; unknown characters as blanks) with its top-left corner at
    /// (x, y), each font pixel `scale` pixels wide. Returns the width drawn.
    pub fn text(&mut self, x: usize, y: usize, text: &str, scale: usize, c: Rgb) -> usize {
        let mut cx = x;
        for ch in text.chars() {
            let rows = glyph(ch);
            for (ry, bits) in rows.iter().enumerate() {
                for rx in 0..5 {
                    if bits & (0x10 >> rx) != 0 {
                        self.rect(cx + rx * scale, y + ry * scale, scale, scale, c);
                    }
                }
            }
            cx += 6 * scale;
        }
        cx - x
    }

    /// Width `text` takes at `scale`.
    pub fn text_width(text: &str, scale: usize) -> usize {
        text.chars().count() * 6 * scale
    }

    /// The canvas as a PNG file.
    pub fn png(&self) -> Vec<u8> {
        encode_png(self.width, self.height, &self.pixels)
    }
}

/// One bar.
#[derive(Debug, Clone)]
pub struct Bar {
    /// Label left of the bar.
    pub label: String,
    /// Value (None: drawn as "skipped").
    pub value: Option<f64>,
    /// Text right of the bar.
    pub value_text: String,
    /// Colour.
    pub color: Rgb,
}

/// Draws a titled panel of horizontal bars into the rectangle (x, y, w, h).
pub fn bar_panel(
    c: &mut Canvas,
    x: usize,
    y: usize,
    w: usize,
    h: usize,
    title: &str,
    bars: &[Bar],
) {
    let ink = [30, 30, 30];
    c.text(x + 10, y + 8, title, 2, ink);
    let label_w = bars
        .iter()
        .map(|b| Canvas::text_width(&b.label, 2))
        .max()
        .unwrap_or(0)
        + 20;
    let value_w = bars
        .iter()
        .map(|b| Canvas::text_width(&b.value_text, 2))
        .max()
        .unwrap_or(0)
        + 20;
    let top = y + 36;
    let row_h = ((h.saturating_sub(44)) / bars.len().max(1)).max(16);
    let bar_max = w.saturating_sub(label_w + value_w + 20).max(10);
    let vmax = bars
        .iter()
        .filter_map(|b| b.value)
        .fold(0.0f64, f64::max)
        .max(f64::MIN_POSITIVE);
    // Axis line.
    c.rect(
        x + 10 + label_w - 4,
        top,
        2,
        row_h * bars.len(),
        [160, 160, 160],
    );
    for (i, b) in bars.iter().enumerate() {
        let ry = top + i * row_h;
        let ty = ry + row_h.saturating_sub(14) / 2;
        c.text(x + 10, ty, &b.label, 2, ink);
        let bx = x + 10 + label_w;
        match b.value {
            Some(v) if v.is_finite() => {
                let len = ((v / vmax) * bar_max as f64).round().max(1.0) as usize;
                c.rect(bx, ry + 3, len, row_h.saturating_sub(6), b.color);
                c.text(bx + len + 8, ty, &b.value_text, 2, ink);
            }
            _ => {
                c.text(bx + 8, ty, &b.value_text, 2, [150, 150, 150]);
            }
        }
    }
}

/// Rows of a 5×7 glyph (bit 4 is the leftmost pixel).
fn glyph(ch: char) -> [u8; 7] {
    match ch.to_ascii_uppercase() {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        ',' => [0, 0, 0, 0, 0x0C, 0x04, 0x08],
        '-' => [0, 0, 0, 0x1F, 0, 0, 0],
        '+' => [0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '/' => [0, 0x01, 0x02, 0x04, 0x08, 0x10, 0],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        ':' => [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0],
        '=' => [0, 0, 0x1F, 0, 0x1F, 0, 0],
        '_' => [0, 0, 0, 0, 0, 0, 0x1F],
        '×' => [0, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0],
        _ => [0; 7],
    }
}

const CRC_POLY: u32 = 0xEDB8_8320;

fn crc32(parts: &[&[u8]]) -> u32 {
    let mut crc = !0u32;
    for p in parts {
        for &b in *p {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ CRC_POLY
                } else {
                    crc >> 1
                };
            }
        }
    }
    !crc
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for chunk in data.chunks(5552) {
        for &x in chunk {
            a += x as u32;
            b += a;
        }
        a %= 65521;
        b %= 65521;
    }
    (b << 16) | a
}

/// LSB-first bit packing, as deflate wants.
struct Bits {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl Bits {
    fn put(&mut self, value: u32, count: u32) {
        self.acc |= (value as u64) << self.n;
        self.n += count;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    /// A Huffman code, which deflate stores most significant bit first.
    fn code(&mut self, code: u32, len: u32) {
        let rev = code.reverse_bits() >> (32 - len);
        self.put(rev, len);
    }

    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

/// Fixed-Huffman literal/length symbol.
fn fixed_symbol(b: &mut Bits, sym: u32) {
    match sym {
        0..=143 => b.code(0x30 + sym, 8),
        144..=255 => b.code(0x190 + sym - 144, 9),
        256..=279 => b.code(sym - 256, 7),
        _ => b.code(0xC0 + sym - 280, 8),
    }
}

/// Length symbol, extra bits and base for a match length 3..=258.
fn length_code(len: u32) -> (u32, u32, u32) {
    const BASE: [u32; 29] = [
        3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115,
        131, 163, 195, 227, 258,
    ];
    const EXTRA: [u32; 29] = [
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
    ];
    let i = BASE.iter().rposition(|&b| b <= len).expect("len ≥ 3");
    (257 + i as u32, EXTRA[i], BASE[i])
}

/// zlib stream of `data`: one fixed-Huffman block; repeats of the previous byte become
/// distance-1 matches.
pub fn zlib(data: &[u8]) -> Vec<u8> {
    let mut b = Bits {
        out: vec![0x78, 0x01],
        acc: 0,
        n: 0,
    };
    b.put(1, 1); // final block
    b.put(1, 2); // fixed Huffman
    let mut i = 0;
    while i < data.len() {
        let mut run = 0;
        if i > 0 {
            while i + run < data.len() && run < 258 && data[i + run] == data[i - 1] {
                run += 1;
            }
        }
        if run >= 3 {
            let (sym, extra, base) = length_code(run as u32);
            fixed_symbol(&mut b, sym);
            b.put(run as u32 - base, extra);
            b.code(0, 5); // distance 1
            i += run;
        } else {
            fixed_symbol(&mut b, data[i] as u32);
            i += 1;
        }
    }
    fixed_symbol(&mut b, 256);
    let mut out = b.finish();
    out.extend_from_slice(&adler32(data).to_be_bytes());
    out
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc32(&[kind, data]).to_be_bytes());
}

/// An 8-bit RGB PNG.
pub fn encode_png(width: usize, height: usize, rgb: &[u8]) -> Vec<u8> {
    assert_eq!(rgb.len(), width * height * 3);
    let mut raw = Vec::with_capacity(height * (1 + width * 3));
    for row in rgb.chunks(width * 3) {
        raw.push(1); // Sub filter: flat colours become runs of zeros.
        for (i, &v) in row.iter().enumerate() {
            raw.push(if i >= 3 {
                v.wrapping_sub(row[i - 3])
            } else {
                v
            });
        }
    }
    let mut out = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&(width as u32).to_be_bytes());
    ihdr.extend_from_slice(&(height as u32).to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &zlib(&raw));
    chunk(&mut out, b"IEND", &[]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal inflater for what [`zlib`] writes (fixed Huffman, distance-1 matches), so the
    /// encoder is checked by decoding, not by comparing bytes with itself.
    fn inflate_fixed(z: &[u8]) -> Vec<u8> {
        assert_eq!(&z[..2], &[0x78, 0x01]);
        let data = &z[2..z.len() - 4];
        let mut pos = 0usize;
        let mut bit = |n: u32| -> u32 {
            let mut v = 0;
            for k in 0..n {
                let b = (data[pos / 8] >> (pos % 8)) & 1;
                v |= (b as u32) << k;
                pos += 1;
            }
            v
        };
        assert_eq!(bit(1), 1);
        assert_eq!(bit(2), 1);
        let mut out: Vec<u8> = Vec::new();
        loop {
            // Read a fixed-Huffman symbol MSB-first.
            let mut code = 0u32;
            let mut len = 0;
            let sym = loop {
                code = (code << 1) | bit(1);
                len += 1;
                match (len, code) {
                    (7, 0..=0x17) => break 256 + code,
                    (8, 0x30..=0xBF) => break code - 0x30,
                    (8, 0xC0..=0xC7) => break 280 + code - 0xC0,
                    (9, 0x190..=0x1FF) => break 144 + code - 0x190,
                    _ => assert!(len < 9, "bad code"),
                }
            };
            match sym {
                0..=255 => out.push(sym as u8),
                256 => break,
                _ => {
                    let (extra, base) = (3..=258)
                        .map(length_code)
                        .find(|(s, _, _)| *s == sym)
                        .map(|(_, e, b)| (e, b))
                        .unwrap();
                    let run = base + bit(extra);
                    let mut d = 0;
                    for _ in 0..5 {
                        d = (d << 1) | bit(1);
                    }
                    assert_eq!(d, 0, "distance code 0 (distance 1)");
                    let last = *out.last().unwrap();
                    out.extend(std::iter::repeat_n(last, run as usize));
                }
            }
        }
        assert_eq!(
            u32::from_be_bytes(z[z.len() - 4..].try_into().unwrap()),
            adler32(&out)
        );
        out
    }

    #[test]
    fn zlib_round_trips_runs_and_literals() {
        let mut data = vec![7u8; 1000];
        data.extend((0..=255u8).cycle().take(700));
        data.extend(vec![0u8; 300]);
        let z = zlib(&data);
        assert!(z.len() < data.len() / 2, "runs compress: {}", z.len());
        assert_eq!(inflate_fixed(&z), data);
    }

    #[test]
    fn png_has_valid_chunks_and_the_canvas_pixels() {
        let mut c = Canvas::new(40, 20);
        c.rect(5, 5, 10, 10, [200, 10, 10]);
        c.text(20, 2, "A1", 1, [0, 0, 0]);
        let png = c.png();
        assert_eq!(&png[..8], &[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A]);
        let mut p = 8;
        let mut kinds = Vec::new();
        let mut idat = Vec::new();
        while p < png.len() {
            let len = u32::from_be_bytes(png[p..p + 4].try_into().unwrap()) as usize;
            let kind = &png[p + 4..p + 8];
            let data = &png[p + 8..p + 8 + len];
            let crc = u32::from_be_bytes(png[p + 8 + len..p + 12 + len].try_into().unwrap());
            assert_eq!(crc, crc32(&[kind, data]));
            if kind == b"IHDR" {
                assert_eq!(&data[..8], &[0, 0, 0, 40, 0, 0, 0, 20]);
            }
            if kind == b"IDAT" {
                idat = data.to_vec();
            }
            kinds.push(String::from_utf8_lossy(kind).into_owned());
            p += 12 + len;
        }
        assert_eq!(kinds, ["IHDR", "IDAT", "IEND"]);
        // Undo the Sub filter and compare with the canvas.
        let raw = inflate_fixed(&idat);
        let mut pixels = Vec::new();
        for row in raw.chunks(1 + 40 * 3) {
            assert_eq!(row[0], 1);
            let mut out: Vec<u8> = Vec::new();
            for (i, &v) in row[1..].iter().enumerate() {
                out.push(if i >= 3 {
                    v.wrapping_add(out[i - 3])
                } else {
                    v
                });
            }
            pixels.extend(out);
        }
        assert_eq!(pixels, c.pixels);
        let at = |x: usize, y: usize| &pixels[(y * 40 + x) * 3..(y * 40 + x) * 3 + 3];
        assert_eq!(at(6, 6), &[200, 10, 10]);
        assert_eq!(at(1, 1), &[255, 255, 255]);
    }

    #[test]
    fn crc_matches_the_png_reference_value() {
        // CRC-32 of "IEND" is the constant every PNG ends with.
        assert_eq!(crc32(&[b"IEND"]), 0xAE42_6082);
    }
}
