-- Coloured boxes and ragged-right command lines for the PDF, and a link back to the contents in
-- the HTML. A Div with class `missing` (a result that could not be loaded) or `note` is drawn by
-- the HTML style sheet; pandoc's Typst writer has no styles, so wrap it in a Typst #block here.
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
      local blocks = {pandoc.RawBlock("typst",
        "#block(" .. styles[cls] .. ", inset: 8pt, radius: 3pt, width: 100%, breakable: true)[#set par(justify: false)")}
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

local function ragged_if_code(el)
  if not FORMAT:match("typst") or not mostly_code(el) then
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

-- The HTML: a "Contents" link back to the table of contents, which the style sheet keeps in view
-- (on a wide window the table of contents itself stays in view and the link is hidden).
function Pandoc(doc)
  if FORMAT:match("html") then
    doc.blocks:insert(pandoc.RawBlock("html", '<a class="to-contents" href="#TOC">\u{2191} Contents</a>'))
  end
  return doc
end
