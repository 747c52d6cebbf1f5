// Typesets TeX as SVG with MathJax, for tools/site_maths.py (the site's maths, typeset when the book is built).
//
//   node tools/typeset_maths.js MATHJAX_DIR
//
// MATHJAX_DIR is the MathJax 3 the site serves (sphinx-mathjax-offline's copy; its node-main.js
// loads the same TeX input as the pages' tex-chtml.js, with its autoloaded packages). The first
// line out is {"css": ...}, the stylesheet MathJax's SVG output needs; then for each line in,
// {"tex": "...", "display": true|false}, one line out: {"html": "<mjx-container ...>"} or
// {"error": "..."} (a TeX error, with MathJax's message). The formulas draw their glyphs from
// one hidden <svg> per page (MathJax's global font cache, each glyph once): {"glyphs": true}
// answers {"html": "<svg id=\"MJX-SVG-global-cache\" ...>"} with the glyphs of the formulas
// since the last such request, and starts an empty one for the next page.
"use strict";

const readline = require("node:readline");
const path = require("node:path");

const dir = path.resolve(process.argv[2]);

require(path.join(dir, "node-main.js")).init({
  loader: { paths: { mathjax: dir }, load: ["input/tex", "output/svg", "adaptors/liteDOM", "a11y/assistive-mml"] },
  svg: { fontCache: "global" },
  // A TeX error is an error of the build, not a red formula on the page.
  // An undefined macro too (noundefined would draw its name in red).
  tex: { formatError: (jax, err) => { throw err; }, packages: { "[-]": ["noundefined"] } },
  startup: { typeset: false },
}).then((MathJax) => {
  const adaptor = MathJax.startup.adaptor;
  const out = (object) => process.stdout.write(JSON.stringify(object) + "\n");
  MathJax.startup.output.fontCache.clearCache();
  out({ css: adaptor.textContent(MathJax.svgStylesheet()) });
  // One formula at a time, in order (the promise form loads a package that \require or autoload asks for).
  let queue = Promise.resolve();
  readline.createInterface({ input: process.stdin, terminal: false }).on("line", (line) => {
    queue = queue.then(() => {
      const request = JSON.parse(line);
      if (request.glyphs) {
        const glyphs = MathJax.startup.output.pageElements(MathJax.startup.document);
        MathJax.startup.output.fontCache.clearCache();
        return glyphs;
      }
      MathJax.texReset();
      return MathJax.tex2svgPromise(request.tex, { display: request.display });
    }).then((node) => out({ html: adaptor.outerHTML(node) }),
            (err) => out({ error: String((err && err.message) || err) }));
  });
}).catch((err) => {
  process.stderr.write(`MathJax did not start: ${err && err.stack || err}\n`);
  process.exit(1);
});
