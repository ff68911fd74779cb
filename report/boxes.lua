-- Coloured boxes for the PDF. A Div with class `missing` (a result that could not be loaded) or
-- `note` is drawn by the HTML style sheet; pandoc's Typst writer has no styles, so wrap it in a
-- Typst #block here. Used by report/build.py (and by Quarto through the .qmd's `filters`).
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
