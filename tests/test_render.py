"""Rendering issues and confirmation emails: MJML structure, HTML, plain text, personalisation."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailer.config import Newsletter, Settings
from mailer.content import Issue, load_issue, markup, plaintext
from mailer.content.render import (
    clip_warning,
    render_confirm,
    render_issue,
    render_issue_mjml,
    render_web_view,
)
from mailer.content.rendered import GMAIL_CLIP_BYTES, UNSUBSCRIBE_SLOT, RenderedIssue, personalize
from mailer.errors import RenderError

TEMPLATES = Path(__file__).parents[1] / "templates"
# The seed issue users actually send; only in the development workspace, not in a clone.
SEED = Path(__file__).resolve().parents[2] / "shared" / "seed" / "ml-issue-02.md"
TAG = re.compile(r"</?[a-zA-Z][^>\n]*>")

SAMPLE = """\
# A sample issue

Intro with a [first link](https://example.com/a?x=1&y=2), `x < y && z`, **bold** and _em_.

## Lists and quotes

- first item
- second item with a [second link](https://example.org/b)

1. one
2. two

> A quote
> over two lines.

| Model | Score |
|:------|------:|
| TOGL  |  0.91 |
| GNN   |  0.87 |

![A chart](https://cdn.example.com/chart.png)

[![Linked logo](https://cdn.example.com/logo.png)](https://example.com/landing)

```python
def hello():
    return "a" < "b" > ""
```

---

Closing words.
"""


def make_issue(body: str = SAMPLE, **fields: Any) -> Issue:
    values: dict[str, Any] = {
        "slug": "2026-12-07-sample",
        "path": Path("content/ml-issues/2026-12-07-sample.md"),
        "subject": "Sample issue #01",
        "status": "ready",
        "send_after": None,
        "preheader": "Lists, tables and a chart",
        "body": body,
    }
    values.update(fields)
    return Issue(**values)


@pytest.fixture
def make_newsletter(tmp_path: Path) -> Any:
    def make(**fields: Any) -> Newsletter:
        raw = {
            "id": "ml-issues",
            "name": "Machine Learning Issues",
            "from": "Machine Learning Issues <newsletter@example.com>",
            "issues": str(tmp_path),
            "accent_color": "#c2410c",
            "footer_text": "You get this because you subscribed at example.com.",
            **fields,
        }
        return Newsletter.model_validate(raw, context={"root": tmp_path})

    return make


@pytest.fixture
def newsletter(make_newsletter: Any) -> Newsletter:
    return make_newsletter()  # type: ignore[no-any-return]


@pytest.fixture
def mailer_settings(tmp_path: Path) -> Settings:
    raw = {"base_url": "https://news.example.com/", "postal_address": "Example Ltd, 1 Main St"}
    return Settings.model_validate(raw, context={"root": tmp_path})


@pytest.fixture
def rendered(newsletter: Newsletter, mailer_settings: Settings) -> RenderedIssue:
    return render_issue(make_issue(), newsletter, mailer_settings, templates_dir=TEMPLATES)


def long_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if len(line) > 78 and "://" not in line]


def linked_image(page: str, *, href: str, src: str) -> bool:
    pattern = rf'<a href="{re.escape(href)}"[^>]*>\s*<img [^>]*src="{re.escape(src)}"'
    return re.search(pattern, page) is not None


# --- MJML and HTML ---------------------------------------------------------------------------


def test_markdown_becomes_mjml_blocks_not_one_pasted_html_chunk(
    newsletter: Newsletter, mailer_settings: Settings
) -> None:
    source = render_issue_mjml(make_issue(), newsletter, mailer_settings, templates_dir=TEMPLATES)

    assert '<mjml lang="en" dir="ltr">' in source
    assert re.search(r'<mj-image src="https://cdn.example.com/chart.png" alt="A chart"', source)
    assert re.search(
        r'<mj-image src="https://cdn.example.com/logo.png" alt="Linked logo"[^>]*'
        r'href="https://example.com/landing"', source)
    assert "fluid-on-mobile" in source
    assert "<mj-divider" in source
    assert source.count("<mj-text css-class=\"mailer-text\">") == 3  # split by images and rule
    for tag in ("<h1", "<h2", "<ul", "<ol", "<blockquote", "<table", "<th", "<pre"):
        assert tag in source, tag


def test_html_keeps_headings_links_images_and_code_lines(rendered: RenderedIssue) -> None:
    page = rendered.html

    assert '<html lang="en" dir="ltr"' in page
    assert ">A sample issue</h1>" in page and ">Lists and quotes</h2>" in page
    assert 'href="https://example.com/a?x=1&amp;y=2"' in page
    assert 'href="https://example.org/b"' in page
    assert re.search(r'<img [^>]*src="https://cdn.example.com/chart.png"', page)
    assert linked_image(page, href="https://example.com/landing",
                        src="https://cdn.example.com/logo.png")
    code = re.search(r'<pre style="([^"]*)"><code>(.*?)</code></pre>', page, re.DOTALL)
    assert code and "white-space:pre-wrap" in code[1]
    assert code[2] == 'def hello():\n    return &quot;a&quot; &lt; &quot;b&quot; &gt; &quot;&quot;'
    assert re.search(r'<code style="[^"]*">x &lt; y &amp;&amp; z</code>', page)
    assert "<td " in page and ">TOGL</td>" in page


def test_html_has_preheader_dark_mode_and_accent_but_no_third_party_fonts(
    rendered: RenderedIssue,
) -> None:
    page = rendered.html

    preheader = re.search(r'<div class="mailer-preheader" style="([^"]*)">([^<]*)</div>', page)
    assert preheader and preheader[2] == "Lists, tables and a chart"
    # Hidden, but not by white-on-white text: spam filters score that.
    assert "display:none" in preheader[1] and "color" not in preheader[1]
    assert page.index("mailer-preheader") < page.index("Machine Learning Issues</div>")
    assert re.search(r'<meta name="color-scheme" content="light dark"\s*/?>', page)
    assert "prefers-color-scheme: dark" in page
    assert "color:#c2410c" in page
    assert "fonts.googleapis.com" not in page


def test_footer_has_unsubscribe_web_view_postal_address_and_footer_text(
    rendered: RenderedIssue,
) -> None:
    assert rendered.web_url == "https://news.example.com/issues/ml-issues/2026-12-07-sample"
    for part in (rendered.html, rendered.text):
        assert UNSUBSCRIBE_SLOT in part
        assert rendered.web_url in part
        assert "Example Ltd, 1 Main St" in part
        assert "You get this because you subscribed at example.com." in part
    assert f"Unsubscribe: {UNSUBSCRIBE_SLOT}" in rendered.text
    assert f"View in your browser: {rendered.web_url}" in rendered.text


def test_header_names_the_newsletter_and_dates_the_issue(
    newsletter: Newsletter, mailer_settings: Settings
) -> None:
    dated = make_issue(send_after=datetime(2026, 12, 7, tzinfo=UTC))

    page = render_issue(dated, newsletter, mailer_settings, templates_dir=TEMPLATES).html
    undated = render_issue(make_issue(), newsletter, mailer_settings, templates_dir=TEMPLATES)

    header = page[:page.index('class="mailer-card"')]
    assert ">Machine Learning Issues</div>" in header and ">7 December 2026</div>" in header
    assert "class=\"mailer-date\"" not in undated.html


def test_a_light_accent_stays_on_borders_and_buttons_but_text_is_made_readable(
    make_newsletter: Any, mailer_settings: Settings
) -> None:
    newsletter = make_newsletter(accent_color="#fde047")

    page = render_issue(make_issue(), newsletter, mailer_settings, templates_dir=TEMPLATES).html
    _, confirm, _ = render_confirm(newsletter, mailer_settings, templates_dir=TEMPLATES,
                                   confirm_url="https://news.example.com/confirm/x")

    assert "border-top:4px solid #fde047" in page
    link_colors = set(re.findall(r'<a href="https://example[^"]*" style="color:(#\w+)', page))
    assert len(link_colors) == 1 and "#fde047" not in link_colors
    assert re.search(r"background:#fde047;[^>]*>\s*<a [^>]*color:#111827", confirm)


def test_clipping_is_flagged_past_gmails_limit_and_the_warning_names_the_size() -> None:
    def issue_of(size: int) -> RenderedIssue:
        return RenderedIssue(subject="s", preheader="", html="é" * (size // 2), text="",
                             web_url="https://x.test/")

    assert not issue_of(GMAIL_CLIP_BYTES).clipped
    assert issue_of(GMAIL_CLIP_BYTES + 2).clipped  # bytes, not characters
    assert clip_warning(issue_of(140 * 1024)).startswith(
        "the HTML is 140.0 KB; Gmail clips messages past 102 KB")


def test_logo_is_shown_in_the_header_when_configured(
    make_newsletter: Any, mailer_settings: Settings
) -> None:
    newsletter = make_newsletter(logo_url="https://cdn.example.com/brand.png")

    page = render_issue(make_issue(), newsletter, mailer_settings, templates_dir=TEMPLATES).html

    assert re.search(r'<img alt="Machine Learning Issues"[^>]*src="https://cdn.example.com/brand.png"',
                     page)


def test_subject_is_shown_once_when_the_issue_opens_with_it(
    newsletter: Newsletter, mailer_settings: Settings
) -> None:
    issue = make_issue("## Sample issue #01\n\nHello.\n")

    rendered = render_issue(issue, newsletter, mailer_settings, templates_dir=TEMPLATES)

    assert len(re.findall(r">Sample issue #01</h\d>", rendered.html)) == 1
    assert rendered.text.count("Sample issue #01") == 1


# --- escaping and raw HTML ----------------------------------------------------------------------


def test_values_from_content_and_config_are_escaped(
    make_newsletter: Any, mailer_settings: Settings
) -> None:
    newsletter = make_newsletter(name="Tom & <b>Jerry</b>", footer_text="<script>x()</script>")
    issue = make_issue("Body with <3 & `a < b`.\n", subject="<script>alert(1)</script>",
                       preheader='"quoted" <i>pre</i>')

    rendered = render_issue(issue, newsletter, mailer_settings, templates_dir=TEMPLATES)

    assert "<script" not in rendered.html and "<b>Jerry" not in rendered.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;</h1>" in rendered.html
    assert "Tom &amp; &lt;b&gt;Jerry&lt;/b&gt;" in rendered.html
    assert "Body with &lt;3 &amp; <code" in rendered.html
    assert "<script>alert(1)</script>" in rendered.text  # text/plain shows it as typed


def test_raw_html_is_sanitised_unless_the_newsletter_allows_it(
    make_newsletter: Any, mailer_settings: Settings
) -> None:
    body = ('Hi <span onclick="steal()">there</span><script>alert(1)</script>.\n\n'
            '<div style="position:fixed;color:red"><a href="javascript:x()">click</a></div>\n')
    issue = make_issue(body)

    cleaned = render_issue(issue, make_newsletter(), mailer_settings, templates_dir=TEMPLATES)
    trusted = render_issue(issue, make_newsletter(allow_html=True), mailer_settings,
                           templates_dir=TEMPLATES)

    assert "Hi <span>there</span>." in cleaned.html
    for bad in ("<script", "onclick", "javascript:", "position:fixed"):
        assert bad not in cleaned.html, bad
    assert '<div style="color:red">' in cleaned.html
    assert '<span onclick="steal()">' in trusted.html
    assert "alert(1)" not in cleaned.text and TAG.search(cleaned.text) is None


@settings(max_examples=40, deadline=None)
@given(st.text(alphabet="<>&\"'/=:`*_[]()!#-| \nabscriptimgonerrorjavascript", max_size=200))
def test_arbitrary_markdown_renders_without_scripts_or_tags_in_text(body: str) -> None:
    source = markup.to_mjml(body, accent_color="#2563eb")
    text = plaintext.to_text(body)

    assert "<script" not in source.lower() and "onerror=" not in source.lower()
    assert "javascript:" not in re.sub(r">[^<]*<", "><", source).lower()  # not in any attribute
    assert "</mj-text>" not in source.replace("\n</mj-text>", "")  # no escape from the block
    assert isinstance(text, str)


# --- plain text --------------------------------------------------------------------------------


def test_text_part_is_plain_wrapped_and_lists_links_as_references(
    rendered: RenderedIssue,
) -> None:
    text = rendered.text

    assert TAG.search(text) is None
    assert long_lines(text) == []
    assert text.startswith("Machine Learning Issues\n\nSample issue #01\n================\n")
    assert "A sample issue\n==============" in text
    assert "Lists and quotes\n----------------" in text
    assert "Intro with a first link [1], `x < y && z`, *bold* and _em_." in text
    assert "- first item\n- second item with a second link [2]" in text
    assert "1. one\n2. two" in text
    assert "> A quote over two lines." in text
    assert "Model | Score\n------+------\nTOGL  |  0.91" in text
    assert "[image: A chart] https://cdn.example.com/chart.png\n" in text
    assert "[image: Linked logo] https://cdn.example.com/logo.png [3]" in text
    assert '    def hello():\n        return "a" < "b" > ""' in text
    assert "\n* * *\n" in text
    assert "[1] https://example.com/a?x=1&y=2\n[2] https://example.org/b\n" in text
    assert "[3] https://example.com/landing" in text


def test_text_wraps_paragraphs_at_72_but_never_breaks_a_url() -> None:
    url = "https://example.com/" + "very-long-path/" * 8
    text = plaintext.to_text(("word " * 40) + f"<{url}> end\n")

    assert url in text.splitlines()
    assert max(len(line) for line in text.splitlines() if "://" not in line) <= 72


# --- the seed issue users actually send -------------------------------------------------------


def test_seed_issue_keeps_headings_links_linked_image_and_code(
    newsletter: Newsletter, mailer_settings: Settings, tmp_path: Path
) -> None:
    if not SEED.exists():
        pytest.skip(f"seed issue not found at {SEED} (only in the development workspace)")
    text = SEED.read_text(encoding="utf-8")
    if not text.startswith("---"):
        text = '---\nsubject: "Machine Learning Issue #02"\nstatus: ready\n---\n' + text
    path = tmp_path / "ml-issue-02.md"
    path.write_text(text, encoding="utf-8")
    issue = load_issue(path)

    rendered = render_issue(issue, newsletter, mailer_settings, templates_dir=TEMPLATES)
    page, text = rendered.html, rendered.text

    headings = ["Machine Learning Issue #02", "Why machine learning algorithms are hard to tune?",
                "Topological Graph Neural Networks"]
    for heading in headings:
        assert re.search(rf">{re.escape(heading)}</h[23]>", page), heading
        assert re.search(rf"^{re.escape(heading)}\n[=-]{{{len(heading)}}}$", text, re.M), heading
    for url in ("https://engraved.ghost.io/why-machine-learning-algorithms-are-hard-to-tune",
                "https://arxiv.org/pdf/2102.07835v1.pdf", "https://github.com/UKPLab/EasyNMT"):
        assert f'href="{url}"' in page
        assert re.search(rf"^\[\d+\] {re.escape(url)}$", text, re.M), url
    image = "https://cdn.hashnode.com/res/hashnode/image/upload/v1613025383277/qT41p1MVB.png"
    href = "https://github.iamroyakash.com/AKDSFramework-docs/"
    assert linked_image(page, href=href, src=image)
    number = re.search(rf"^\[(\d+)\] {re.escape(href)}$", text, re.M)
    assert number and f"[image: image.png] {image} [{number[1]}]" in text
    assert re.search(r"<pre [^>]*><code>pip install -U easynmt</code></pre>", page)
    assert "\n    pip install -U easynmt\n" in text
    assert "- Translation between 150+ languages" in text
    assert TAG.search(text) is None
    assert long_lines(text) == []
    assert len(page.encode()) < 102 * 1024 and not rendered.clipped


# --- per recipient and web view ----------------------------------------------------------------


def test_personalize_fills_the_unsubscribe_link_everywhere(rendered: RenderedIssue) -> None:
    url = "https://news.example.com/unsubscribe/tok.en-123?x=1&y=2"

    page, text = personalize(rendered, unsubscribe_url=url)

    assert "unsubscribe.invalid" not in page and "unsubscribe.invalid" not in text
    assert page.count('href="https://news.example.com/unsubscribe/tok.en-123?x=1&amp;y=2"') == (
        rendered.html.count(UNSUBSCRIBE_SLOT))
    assert f"Unsubscribe: {url}" in text


def test_personalize_escapes_a_hostile_unsubscribe_url(rendered: RenderedIssue) -> None:
    page, _ = personalize(rendered, unsubscribe_url='https://x.test/"><script>alert(1)</script>')

    assert "<script" not in page
    assert "&quot;&gt;&lt;script&gt;" in page


def test_web_view_drops_the_unsubscribe_link_and_keeps_the_issue(
    rendered: RenderedIssue,
) -> None:
    page = render_web_view(rendered)

    assert UNSUBSCRIBE_SLOT not in page and ">Unsubscribe</a>" not in page
    assert ">A sample issue</h1>" in page and "Example Ltd, 1 Main St" in page


# --- confirmation email ------------------------------------------------------------------------


def test_confirm_email_has_a_button_to_the_confirm_url(
    newsletter: Newsletter, mailer_settings: Settings
) -> None:
    url = "https://news.example.com/confirm/abc.DEF-123"

    subject, page, text = render_confirm(newsletter, mailer_settings, confirm_url=url,
                                         templates_dir=TEMPLATES)

    assert subject == "Confirm your subscription to Machine Learning Issues"
    assert re.search(rf'<a href="{re.escape(url)}"[^>]*>\s*Confirm subscription', page)
    assert '<html lang="en" dir="ltr"' in page and "Example Ltd, 1 Main St" in page
    assert f"\n\n{url}\n\n" in text and "valid for 7 days" in text
    assert TAG.search(text) is None and long_lines(text) == []


def test_confirm_email_escapes_a_hostile_confirm_url(
    newsletter: Newsletter, mailer_settings: Settings
) -> None:
    _, page, _ = render_confirm(newsletter, mailer_settings,
                                confirm_url='https://x.test/"><script>alert(1)</script>',
                                templates_dir=TEMPLATES)

    assert "<script" not in page and "&lt;script&gt;" in page


# --- errors ------------------------------------------------------------------------------------


def test_template_errors_name_the_file_and_line(
    tmp_path: Path, make_newsletter: Any, mailer_settings: Settings
) -> None:
    (tmp_path / "broken.mjml.j2").write_text("<mjml>\n<mj-body>\n{{ no_such_value }}\n</mjml>\n")

    with pytest.raises(RenderError) as error:
        render_issue(make_issue(), make_newsletter(template="broken.mjml.j2"), mailer_settings,
                     templates_dir=tmp_path)
    with pytest.raises(RenderError, match="template not found"):
        render_issue(make_issue(), make_newsletter(template="missing.mjml.j2"), mailer_settings,
                     templates_dir=tmp_path)

    assert str(error.value).startswith(f"{tmp_path / 'broken.mjml.j2'}:3: ")
    assert "no_such_value" in str(error.value)
