-- Coloured boxes and ragged-right command lines for the PDF; tables in a scrolling box and a link
-- back to the contents in the HTML. A Div with class `missing` (a result that could not be loaded)
-- or `note` is drawn by the HTML style sheet; pandoc's Typst writer has no styles, so wrap it in a
-- Typst #block here.
-- Used by report/build.py (and by Quarto through the .qmd's `filters`).
local styles = {
  missing = 'fill: rgb("#fdecea"), stroke: 0.8pt + rgb("#b03a2e")',
  note = 'fill: rgb("#eef4fb"), stroke: 0.8pt + rgb("#2e6da4")',
}

function Div(el)
  if not FORMAT:match("typst") then
    return nil
  end
  for _, cls in ipairs({"missing", "note"}) do
    if el.classes:includes(cls) then
      -- a box of a few lines stays on one page; a long one (it could exceed a page) may break
      local breakable = utf8.len(pandoc.utils.stringify(el)) > 1500 and "true" or "false"
      local blocks = {pandoc.RawBlock("typst",
        "#block(" .. styles[cls] .. ", inset: 8pt, radius: 3pt, width: 100%, breakable: " .. breakable ..
        ")[#set par(justify: false)")}
      for _, b in ipairs(el.content) do
        table.insert(blocks, b)
      end
      table.insert(blocks, pandoc.RawBlock("typst", "]"))
      if el.identifier ~= "" then
        -- keep the id as a label so links to it (a missing figure) still resolve
        table.insert(blocks, 1, pandoc.RawBlock("typst", "#metadata(none) <" .. el.identifier .. ">"))
      end
      return blocks
    end
  end
end

-- Command lines: a paragraph or list item that is mostly inline code (the commands of the
-- provenance appendix, a list of file hashes) is set ragged right in the PDF. Justified, its few
-- prose spaces would stretch to fill the line (spaces inside code keep their width, see
-- typst-header.typ). Table cells are ragged right already and left alone.
local function mostly_code(el)
  local code = 0
  el:walk({Code = function(c) code = code + utf8.len(c.text) end})
  return code > 0 and 2 * code >= utf8.len(pandoc.utils.stringify(el))
end

-- Apostrophes in the PDF: pandoc's Typst writer turns the typographic apostrophe back into ', which
-- Typst sets as a prime after a digit ("dropout 0.2′s"); written as raw Typst it stays an apostrophe.
function Str(el)
  if not FORMAT:match("typst") or not el.text:find("\u{2019}", 1, true) then
    return nil
  end
  local out, rest = pandoc.Inlines({}), el.text
  while true do
    local at = rest:find("\u{2019}", 1, true)
    if not at then break end
    if at > 1 then out:insert(pandoc.Str(rest:sub(1, at - 1))) end
    out:insert(pandoc.RawInline("typst", "\u{2019}"))
    rest = rest:sub(at + 3)           -- the apostrophe is 3 bytes of UTF-8
  end
  if rest ~= "" then out:insert(pandoc.Str(rest)) end
  return out
end

local function html_escape(text)
  return (text:gsub("&", "&amp;"):gsub("<", "&lt;"):gsub(">", "&gt;"))
end

-- In the HTML the same lines break only between words too: each word of their code is one span
-- that does not break (style.css), where a browser would break after a hyphen ("--if-" / "stale").
local function words_unbroken(el)
  return el:walk({Code = function(c)
    local words = {}
    for word in c.text:gmatch("%S+") do
      table.insert(words, '<span class="word">' .. html_escape(word) .. "</span>")
    end
    return pandoc.RawInline("html", "<code>" .. table.concat(words, " ") .. "</code>")
  end})
end

local function ragged_if_code(el)
  if not mostly_code(el) then
    return nil
  end
  if FORMAT:match("html") then
    return words_unbroken(el)
  end
  if not FORMAT:match("typst") then
    return nil
  end
  el.content:insert(1, pandoc.RawInline("typst", "#block[#set par(justify: false)\n"))
  el.content:insert(pandoc.RawInline("typst", "]"))
  return el
end

function Para(el)
  return ragged_if_code(el)
end

local function list_items(el)        -- a tight list's items are Plain, like table cells
  for _, item in ipairs(el.content) do
    for i, block in ipairs(item) do
      if block.t == "Plain" then
        item[i] = ragged_if_code(block) or block
      end
    end
  end
  return el
end

BulletList = list_items
OrderedList = list_items

-- Table headings, in both outputs: a bracketed group ("[95% CI]") is not split across lines.
local function glue_brackets(cell)
  local depth = 0
  cell.contents = cell.contents:walk({Inlines = function(inlines)
    for i, el in ipairs(inlines) do
      if el.t == "Str" then
        local _, opened = el.text:gsub("%[", "")
        local _, closed = el.text:gsub("%]", "")
        depth = math.max(0, depth + opened - closed)
      elseif el.t == "Space" and depth > 0 then
        inlines[i] = pandoc.Str("\u{a0}")
      end
    end
    return inlines
  end})
end

-- Tables in the HTML. Each goes into a box that scrolls sideways when the table is wider than
-- the window allows (style.css: the caption stays in view above it, and a wide window lets the box
-- reach into the free space right of the text); the box can take the keyboard focus, so that it
-- scrolls without a mouse. The browser sizes the columns to their content: the relative widths
-- that pandoc takes from a pipe table's separator line are meant for the PDF (fixed columns on a
-- page) and are dropped here. A short cell (a number with its interval, a variant's name, a file
-- name) is kept on one line (class nowrap); a longer one, prose, may wrap at its spaces.
local SHORT_CELL = 32           -- characters

local function each_row(el, fn)
  for _, row in ipairs(el.head.rows) do fn(row, true) end
  for _, body in ipairs(el.bodies) do
    for _, row in ipairs(body.head) do fn(row, true) end
    for _, row in ipairs(body.body) do fn(row, false) end
  end
  for _, row in ipairs(el.foot.rows) do fn(row, false) end
end

function Table(el)
  each_row(el, function(row, heading)
    for _, cell in ipairs(row.cells) do
      if heading then
        glue_brackets(cell)
      elseif FORMAT:match("html") and utf8.len(pandoc.utils.stringify(cell.contents)) <= SHORT_CELL then
        cell.attr.classes:insert("nowrap")
      end
    end
  end)
  if not FORMAT:match("html") then
    return el
  end
  for i, spec in ipairs(el.colspecs) do
    el.colspecs[i] = {spec[1], pandoc.ColWidthDefault}
  end
  local label = pandoc.utils.stringify(el.caption.long):match("^(Table %d+):") or "Table"
  -- a list of pairs, not a Lua table: a table's order varies from run to run, the HTML must not
  local attributes = {{"role", "region"}, {"tabindex", "0"}, {"aria-label", label}}
  return pandoc.Div({el}, pandoc.Attr("", {"table-scroll"}, attributes))
end

-- The HTML: a "Contents" link back to the table of contents, which the style sheet keeps in view
-- (on a wide window the table of contents itself stays in view and the link is hidden).
function Pandoc(doc)
  if FORMAT:match("html") then
    doc.blocks:insert(pandoc.RawBlock("html", '<a class="to-contents" href="#TOC">\u{2191} Contents</a>'))
  end
  return doc
end
