#!/usr/bin/env python3
"""Plots `make soak`'s samples as an SVG: one panel per figure against minutes, the
phases shaded (load, churn, settle), the first sample dashed and its pass margin shaded.

    tests/soak/plot.py samples.csv out.svg [TITLE]

The margins are the pass line's (init/src/bench/churn/mod.rs MARGINS); a test checks they
agree. Standard library only.
"""
import csv
import sys

MARGINS = {
    "rss_kib": 8192, "fds": 2, "threads": 4, "processes": 0, "cgroups": 0, "mounts": 0,
    "interfaces": 0, "taps": 0, "table": 0, "mem_available_kib": 65536, "connections": 0,
}
TITLES = {
    "rss_kib": "auraed RSS (MiB)", "fds": "auraed open descriptors", "threads": "auraed threads",
    "processes": "node processes", "cgroups": "cgroups", "mounts": "mounts (PID 1)",
    "interfaces": "network interfaces", "taps": "TAPs", "table": "workload table",
    "mem_available_kib": "MemAvailable (MiB)", "connections": "API connections",
}
SCALE = {"rss_kib": 1024, "mem_available_kib": 1024}
PHASES = {"load": "#fde9c8", "churn": "#dbe8f6", "settle": "#e3f3df"}
W, H, COLS = 300, 170, 3
L, R, T, BOT = 52, 10, 24, 26


def esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def panel(x0, y0, name, rows):
    xs = [float(r["at_s"]) / 60 for r in rows]
    sc = SCALE.get(name, 1)
    ys = [int(r[name]) / sc for r in rows]
    start, m = ys[0], MARGINS[name] / sc
    band = (start - m, start) if name == "mem_available_kib" else (start, start + m)
    lo, hi = min(ys + [band[0]]), max(ys + [band[1]])
    if hi - lo < 1e-9:
        lo, hi = lo - 1, hi + 1
    pad = (hi - lo) * 0.08
    lo, hi = lo - pad, hi + pad
    xmax = max(xs[-1], 1e-9)
    pw, ph = W - L - R, H - T - BOT

    def px(x):
        return x0 + L + pw * x / xmax

    def py(y):
        return y0 + T + ph * (1 - (y - lo) / (hi - lo))

    out = [f'<text x="{x0 + L}" y="{y0 + 15}" font-size="12" font-weight="bold">{esc(TITLES[name])}</text>']
    # Phase bands, from each phase's first sample to the next phase's.
    i = 0
    while i < len(rows):
        ph_name, j = rows[i]["phase"], i
        while j + 1 < len(rows) and rows[j + 1]["phase"] == ph_name:
            j += 1
        end = xs[j + 1] if j + 1 < len(rows) else xs[j]
        if ph_name in PHASES:
            out.append(f'<rect x="{px(xs[i]):.1f}" y="{y0 + T}" width="{max(px(end) - px(xs[i]), 0.5):.1f}" '
                       f'height="{ph}" fill="{PHASES[ph_name]}"/>')
        i = j + 1
    out.append(f'<rect x="{px(0):.1f}" y="{py(band[1]):.1f}" width="{pw}" '
               f'height="{max(py(band[0]) - py(band[1]), 1):.1f}" fill="#9c9" fill-opacity="0.45"/>')
    out.append(f'<line x1="{px(0):.1f}" x2="{px(xmax):.1f}" y1="{py(start):.1f}" y2="{py(start):.1f}" '
               'stroke="#393" stroke-dasharray="4 3"/>')
    pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys))
    out.append(f'<polyline points="{pts}" fill="none" stroke="#c33" stroke-width="1.5"/>')
    out.append(f'<rect x="{x0 + L}" y="{y0 + T}" width="{pw}" height="{ph}" fill="none" stroke="#555"/>')
    for y in (lo + pad, hi - pad):
        label = f"{y:.1f}" if sc > 1 else f"{y:.0f}"
        out.append(f'<text x="{x0 + L - 4}" y="{py(y) + 4:.1f}" font-size="10" text-anchor="end">{label}</text>')
    for x in (0, xmax / 2, xmax):
        out.append(f'<text x="{px(x):.1f}" y="{y0 + H - 10}" font-size="10" text-anchor="middle">{x:.0f}</text>')
    return out


def main():
    src, dst = sys.argv[1], sys.argv[2]
    title = sys.argv[3] if len(sys.argv) > 3 else "make soak"
    rows = list(csv.DictReader(open(src)))
    if not rows:
        sys.exit("plot: no samples in " + src)
    names = [n for n in MARGINS if n in rows[0]]
    nrows = (len(names) + COLS - 1) // COLS
    width, height = COLS * W, nrows * H + 50
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>',
           f'<text x="10" y="18" font-size="14" font-weight="bold">{esc(title)}: the node sampled '
           f'(minutes); dashed: the first sample, green: the pass margin</text>']
    x = 10
    for ph_name, color in PHASES.items():
        out.append(f'<rect x="{x}" y="28" width="12" height="10" fill="{color}" stroke="#999"/>'
                   f'<text x="{x + 16}" y="37" font-size="11">{ph_name}</text>')
        x += 80
    for k, name in enumerate(names):
        out += panel((k % COLS) * W, 44 + (k // COLS) * H, name, rows)
    out.append("</svg>")
    with open(dst, "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
