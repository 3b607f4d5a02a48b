// What the explorers share: el(tag, attrs, text), an SVG element. kdnb.book.widgets puts this file
// before each explorer's module (explorer.js, grid_explorer.js), in JupyterLab and on the site.
const SVG = "http://www.w3.org/2000/svg";
const el = (tag, attrs = {}, text) => {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
};
