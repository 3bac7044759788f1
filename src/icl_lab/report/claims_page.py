"""One page of every reproduction's claims (reproduce all): claims.md and a self-contained claims.html."""

import html
from pathlib import Path

from icl_lab.files import atomic_write_text
from icl_lab.report.html import figures_html, page


def _summary(records: list[dict]) -> tuple[int, int, float]:
    """(claims reproduced, claims, minutes of wall time summed over the reproductions)."""
    claims = [c for r in records for c in r["claims"]]
    return sum(c["reproduced"] for c in claims), len(claims), sum(r["wall_s"] for r in records) / 60


def _verdict(claim: dict) -> str:
    return "reproduced" if claim["reproduced"] else "not reproduced"


def _took(record: dict) -> str:
    return f"{record['wall_s'] / 60:.1f} min" + (" (last resumed part only)" if record["resumed"] else "")


def _seeds(claim: dict) -> str:
    return ", ".join(map(str, claim["seeds"]))


def claims_table(claims: list[dict]) -> list[str]:
    """Markdown rows: each claim (as a dict), the paper's figure, ours, the seeds behind ours, the
    verdict."""
    lines = ["| finding | paper | ours | seeds | verdict |", "| --- | --- | --- | --- | --- |"]
    return lines + [
        f"| {c['finding']} | {c['paper']} | {c['ours']} | {_seeds(c)} | {_verdict(c)} |" for c in claims
    ]


def claims_markdown(records: list[dict], mode: str) -> str:
    """The page as Markdown, links relative to the reproduce-all directory."""
    done, total, minutes = _summary(records)
    lines = [
        f"# Every reproduction's claims ({mode} mode)",
        "",
        f"{done} of {total} claims reproduced over {len(records)} reproductions; {minutes:.1f} min of "
        "training and judging (a resumed reproduction counts its last part). Seeds: those each "
        "figure rests on.",
        "",
        "| reproduction | claims reproduced | wall time |",
        "| --- | --- | --- |",
    ]
    lines += [
        f"| [{r['title']}](#{r['reproduction']}) | {sum(c['reproduced'] for c in r['claims'])} of "
        f"{len(r['claims'])} | {_took(r)} |"
        for r in records
    ]
    for r in records:
        name = r["reproduction"]
        reports = ", ".join(f"[{run}]({name}/{where})" for run, where in r["reports"].items())
        lines += [
            "",
            f'<a id="{name}"></a>',
            f"## {r['title']}",
            "",
            f"`icl-lab reproduce {name}`, {_took(r)}; [its claims and figures]({name}/claims.md); "
            f"reports: {reports or 'none'}",
            "",
            *claims_table(r["claims"]),
        ]
    return "\n".join(lines) + "\n"


def claims_html(records: list[dict], mode: str, out: Path) -> str:
    """The page as self-contained HTML: every reproduction's figures inlined, run reports linked."""
    done, total, minutes = _summary(records)
    e = html.escape
    parts = [
        f"<h1>Every reproduction's claims ({e(mode)} mode)</h1>",
        f"<p>{done} of {total} claims reproduced over {len(records)} reproductions; {minutes:.1f} min "
        "of training and judging (a resumed reproduction counts its last part). Seeds: those each "
        "figure rests on.</p>",
    ]
    for r in records:
        name = r["reproduction"]
        reports = ", ".join(
            f'<a href="{e(name)}/{e(where)}">{e(run)}</a>' for run, where in r["reports"].items()
        )
        rows = "".join(
            f"<tr><td>{e(c['finding'])}</td><td>{e(c['paper'])}</td><td>{e(c['ours'])}</td>"
            f"<td>{e(_seeds(c))}</td><td>{_verdict(c)}</td></tr>"
            for c in r["claims"]
        )
        images = {
            f"{name}: {Path(f).stem}": (out / name / f).read_bytes()
            for f in r["figures"]
            if f.endswith(".png")
        }
        parts += [
            f'<h2 id="{e(name)}">{e(r["title"])}</h2>',
            f"<p><code>icl-lab reproduce {e(name)}</code>, {e(_took(r))}; reports: {reports or 'none'}</p>",
            "<table><tr><th>finding</th><th>paper</th><th>ours</th><th>seeds</th><th>verdict</th></tr>"
            f"{rows}</table>",
            figures_html(images),
        ]
    return page(f"icl-lab claims ({mode})", "\n".join(parts))


def write_claims_page(records: list[dict], out: Path, mode: str) -> None:
    """claims.md and claims.html in out, the reproduce-all directory holding each reproduction."""
    atomic_write_text(out / "claims.md", claims_markdown(records, mode))
    atomic_write_text(out / "claims.html", claims_html(records, mode, out))
