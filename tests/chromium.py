"""A page the project writes is checked as a browser shows it: headless Chromium renders it.

Reading the HTML text proves the tags are there, not that the page renders or that its PNGs load.
``check_page`` runs ``chromium --headless`` twice on a page: once for a screenshot of the page as
written, which must be a PNG of the window's size with many distinct colours (a blank or broken
render has a handful), and once with ``--dump-dom`` on a copy of the page that carries a small
script: at the window's ``load`` event (which waits for every image to load or fail) it writes on
``<body>`` how many ``<img>`` decoded to a non-zero width; the copy sits in a temporary folder
with ``<base href>`` naming the page's folder, so the relative PNG paths resolve as in the
original and nothing is written beside it.

Chromium is a system package (``tools/install_system_packages.sh`` installs it on CI). Where it is
absent the check skips, except under CI (the ``CI`` environment variable set), where a missing
browser is a broken machine and the check fails.
"""
import os
import pathlib
import shutil
import subprocess
import tempfile

import numpy as np
import pytest

WINDOW = (1200, 2400)
TIMEOUT_S = 90
_PROBE = """<script>
window.addEventListener("load", function () {
  var images = document.images, loaded = 0;
  for (var i = 0; i < images.length; i++) { if (images[i].complete && images[i].naturalWidth > 0) loaded++; }
  document.body.setAttribute("data-images-loaded", loaded + "/" + images.length);
});
</script>"""
_ATTRIBUTE = 'data-images-loaded="'


def chromium_binary():
    """The path of ``chromium``; skips (fails under CI) where there is none."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    message = "chromium not found (tools/install_system_packages.sh installs it)"
    if os.environ.get("CI"):
        pytest.fail(message + "; CI must check the pages in a browser")
    pytest.skip(message)


def _run(binary, url, *flags):
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                   f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                   "--virtual-time-budget=10000", *flags, url]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"chromium did not finish rendering {url} in {TIMEOUT_S} s")
    assert done.returncode == 0, f"chromium failed on {url}: {done.stderr[-2000:]}"
    return done.stdout


def screenshot(page, path):
    """Renders ``page`` (an HTML file) into the PNG ``path``; returns it as an [h, w, channels] array."""
    import matplotlib.image

    _run(chromium_binary(), pathlib.Path(page).resolve().as_uri(), f"--screenshot={path}")
    assert os.path.exists(path), f"chromium wrote no screenshot of {page}"
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", "the screenshot is not a PNG"
    return matplotlib.image.imread(path)


def images_loaded(page):
    """``(loaded, total)``: the page's ``<img>`` elements that decoded to a non-zero width."""
    page = pathlib.Path(page).resolve()
    text = page.read_text(encoding="utf-8")
    assert "</head>" in text and "</body>" in text, f"{page} has no </head> or </body>"
    with tempfile.TemporaryDirectory(prefix="chromium-page-") as folder:
        copy = pathlib.Path(folder) / page.name
        base = f'<base href="{page.parent.as_uri()}/">'
        copy.write_text(text.replace("</head>", base + "</head>", 1).replace("</body>", _PROBE + "</body>", 1),
                        encoding="utf-8")
        dom = _run(chromium_binary(), copy.as_uri(), "--dump-dom")
    start = dom.find(_ATTRIBUTE)
    assert start >= 0, f"the probe did not run on {page}: {dom[:500]}"
    loaded, total = dom[start + len(_ATTRIBUTE):].split('"', 1)[0].split("/")
    return int(loaded), int(total)


def check_page(page, images, min_colours=100, tmp=None):
    """Asserts ``page`` renders in Chromium: a full-size screenshot with at least ``min_colours``
    distinct colours (a blank page has 1, a few lines of text about 200, a page whose plots are
    in view over a thousand), and every one of its ``images`` ``<img>`` elements loaded. Returns
    the screenshot's path."""
    tmp = tmp or tempfile.mkdtemp(prefix="chromium-shot-")
    shot = os.path.join(tmp, "screenshot.png")
    pixels = screenshot(page, shot)
    assert pixels.shape[:2] == (WINDOW[1], WINDOW[0]), f"screenshot {pixels.shape} is not the window's size"
    rgb = np.round(pixels[..., :3] * 255).astype(np.int64)
    colours = len(np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2]))
    assert colours >= min_colours, f"the screenshot has {colours} distinct colours: a blank or broken render"
    assert images_loaded(page) == (images, images), f"not every image of {page} loaded"
    return shot
