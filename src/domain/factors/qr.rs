//! The enrollment QR code, drawn by the proxy itself (no third-party service ever sees a secret):
//! a PNG in a `data:` URL, which the page's CSP allows for images.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use qrcode::{Color, EcLevel, QrCode};

/// Pixels per QR module, and the quiet zone in modules (ISO/IEC 18004 asks for 4).
const SCALE: usize = 6;
const QUIET: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum QrError {
    #[error("the text does not fit in a QR code: {0}")]
    Encode(String),
    #[error("the QR image could not be written: {0}")]
    Png(String),
}

/// A PNG of `text` as a QR code.
pub fn png(text: &str) -> Result<Vec<u8>, QrError> {
    let code = QrCode::with_error_correction_level(text, EcLevel::M).map_err(|e| QrError::Encode(e.to_string()))?;
    let modules = code.width();
    let colors = code.to_colors();
    let side = (modules + 2 * QUIET) * SCALE;
    let mut pixels = vec![255u8; side * side];
    for (i, color) in colors.iter().enumerate() {
        if *color == Color::Dark {
            let (mx, my) = (i % modules + QUIET, i / modules + QUIET);
            for y in my * SCALE..(my + 1) * SCALE {
                pixels[y * side + mx * SCALE..y * side + (mx + 1) * SCALE].fill(0);
            }
        }
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, side as u32, side as u32);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| QrError::Png(e.to_string()))?;
    writer.write_image_data(&pixels).map_err(|e| QrError::Png(e.to_string()))?;
    writer.finish().map_err(|e| QrError::Png(e.to_string()))?;
    Ok(out)
}

pub fn png_data_url(text: &str) -> Result<String, QrError> {
    Ok(format!("data:image/png;base64,{}", STANDARD.encode(png(text)?)))
}
