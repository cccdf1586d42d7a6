"""Draws the module and extension icons (128x128 PNG): a U-shaped encoder/decoder of blocks with
"++", over an organ-coloured segmentation blob. Run: python Utilities/make_icons.py (needs Pillow)."""

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parents[1]


def draw(size: int = 128) -> Image.Image:
    s = size / 128
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle([2 * s, 2 * s, 126 * s, 126 * s], radius=22 * s, fill=(24, 44, 78, 255))
    d.ellipse([30 * s, 58 * s, 98 * s, 112 * s], fill=(221, 130, 101, 255))  # "liver" blob
    d.ellipse([44 * s, 70 * s, 70 * s, 96 * s], fill=(157, 108, 162, 255))
    # encoder (left, going down) and decoder (right, going up): blocks shrinking towards the bottom
    blocks = [(14, 14, 28), (22, 34, 22), (30, 50, 16), (38, 64, 10)]
    for x, y, w in blocks:
        d.rectangle([x * s, y * s, (x + w / 2) * s, (y + w) * s], fill=(120, 200, 255, 255))
        xr = 128 - x - w / 2
        d.rectangle([xr * s, y * s, (xr + w / 2) * s, (y + w) * s], fill=(120, 255, 170, 255))
    d.line([(46 * s, 70 * s), (82 * s, 70 * s)], fill=(255, 255, 255, 255), width=max(1, int(3 * s)))
    font = ImageFont.load_default(size=int(30 * s))
    d.text((64 * s, 30 * s), "++", font=font, fill=(255, 255, 255, 255), anchor="mm")
    return img


if __name__ == "__main__":
    icon = draw(128)
    icon.save(REPO / "Resources" / "UNETRPlusPlus.png")  # extension icon
    icon.save(REPO / "UNETRPlusPlus" / "Resources" / "Icons" / "UNETRPlusPlus.png")  # module icon
