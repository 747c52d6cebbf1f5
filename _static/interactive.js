/* Interactive figures of the book (see tinyllm/interactive.py for the Python side).
 *
 * Each <div class="tinyllm-interactive" data-kind="..."> holds its data as JSON
 * and a static picture. If the figure draws, the picture is hidden; if anything
 * is missing (no Plotly, an error), the picture stays, and the error goes to the
 * console, where the browser tests see it.
 *
 * Plotly (1.5 MB) is not in the page's <head>: the reader sees the text and the
 * static pictures first, and Plotly is fetched once the page has loaded and the
 * browser is idle (its URL is window.tinyllmPlotly, written by tools/sphinx_site.py
 * on pages with a Plotly figure).
 */
(function () {
  "use strict";

  const PLOT_CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d"] };

  /* ------------------------------------------------------------------ colour mode */

  // Plotly draws in its own colours (a white paper, grey text). The page's theme has a light
  // and a dark mode (<html data-theme>), so every layout takes the page's own colours: the
  // paper is transparent (the page shows through), text is the page's text colour, grid lines
  // a faint grey. The browser tests check the text's contrast in both modes.
  function themeColours() {
    const style = getComputedStyle(document.documentElement);
    const css = (name, fallback) => style.getPropertyValue(name).trim() || fallback;
    const text = css("--pst-color-text-base", "#222832");
    const grid = "rgba(128, 128, 128, 0.25)";  // faint on either background, as Plotly's own #eee on white
    return {
      paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)", "font.color": text,
      "xaxis.gridcolor": grid, "yaxis.gridcolor": grid, "xaxis.zerolinecolor": grid, "yaxis.zerolinecolor": grid,
      "modebar.bgcolor": "rgba(0,0,0,0)", "modebar.color": text, "modebar.activecolor": css("--pst-color-primary", text),
    };
  }

  // The same colours written into a nested layout (as Plotly.react takes it).
  function themed(layout) {
    Object.entries(themeColours()).forEach(([path, value]) => {
      const keys = path.split(".");
      let node = layout;
      keys.slice(0, -1).forEach((key) => { node = node[key] = node[key] || {}; });
      node[keys[keys.length - 1]] = value;
    });
    return layout;
  }

  // When the reader switches the mode, every drawn figure takes the new colours.
  function followColourMode() {
    new MutationObserver(() => {
      document.querySelectorAll(".tinyllm-interactive .js-plotly-plot").forEach((plot) => {
        Plotly.relayout(plot, themeColours());
      });
    }).observe(document.documentElement, { attributes: true, attributeFilter: ["data-theme"] });
  }

  function element(tag, attributes, text) {
    const node = document.createElement(tag);
    Object.entries(attributes || {}).forEach(([key, value]) => node.setAttribute(key, value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function control(label, input, output) {
    const wrapper = element("label", { class: "tinyllm-control" });
    wrapper.append(element("span", {}, label), input);
    if (output) wrapper.append(output);
    return wrapper;
  }

  function range(min, max, step, value) {
    return element("input", { type: "range", min: min, max: max, step: step, value: value });
  }

  /* ------------------------------------------------------------------ heatmaps */

  function heatmap(root, data) {
    const plot = element("div", { class: "tinyllm-plot" });
    let select = null;
    if (data.panels.length > 1) {
      select = element("select", { "aria-label": "which panel to show" });
      data.panels.forEach((panel, i) => select.append(element("option", { value: i }, panel.name)));
      root.append(control("Show ", select));
    }
    root.append(plot);
    const xs = data.x.map((_, i) => i);
    const ys = data.y.map((_, i) => i);
    // Hover text per cell: labels may repeat, so the axes are indices and the labels ride along.
    const hover = data.y.map((yLabel) => data.x.map((xLabel) => [yLabel, xLabel]));
    const tickStep = (n) => Math.max(1, Math.ceil(n / 40));
    const ticks = (labels) => ({
      tickvals: labels.map((_, i) => i).filter((i) => i % tickStep(labels.length) === 0),
      ticktext: labels.filter((_, i) => i % tickStep(labels.length) === 0),
    });
    function draw(index) {
      const panel = data.panels[index];
      const trace = {
        type: "heatmap", z: panel.z, x: xs, y: ys, customdata: hover, colorscale: data.colorscale, reversescale: data.reverseScale,
        zmin: data.zmin === null ? undefined : data.zmin, zmax: data.zmax === null ? undefined : data.zmax,
        hovertemplate: `${data.yTitle}: %{customdata[0]}<br>${data.xTitle}: %{customdata[1]}<br>` +
          `${data.valueTitle}: %{z:.3f}<extra>${panel.name}</extra>`,
        colorbar: { title: { text: data.valueTitle, side: "right" } },
      };
      const layout = {
        margin: { l: 70, r: 10, t: 30, b: 60 }, height: Math.min(560, 220 + 9 * data.y.length),
        title: { text: panel.name, font: { size: 13 } },
        xaxis: Object.assign({ title: { text: data.xTitle }, tickangle: -60 }, ticks(data.x)),
        yaxis: Object.assign({ title: { text: data.yTitle }, autorange: "reversed" }, ticks(data.y)),
      };
      return Plotly.react(plot, [trace], themed(layout), PLOT_CONFIG);
    }
    if (select) select.addEventListener("change", () => draw(Number(select.value)));
    return draw(0);
  }

  /* ------------------------------------------------------------------ sampling */

  // The filters of tinyllm/sampling.py, on a plain array of logits.
  function softmax(logits) {
    const max = Math.max(...logits.filter(Number.isFinite));
    const exps = logits.map((z) => (Number.isFinite(z) ? Math.exp(z - max) : 0));
    const total = exps.reduce((a, b) => a + b, 0);
    return exps.map((e) => e / total);
  }

  function topK(logits, k) {
    if (k >= logits.length) return logits.slice();
    const kth = logits.slice().sort((a, b) => b - a)[k - 1];
    return logits.map((z) => (z < kth ? -Infinity : z)); // ties with the k-th are kept
  }

  function topP(logits, p) {
    const probs = softmax(logits);
    const order = probs.map((_, i) => i).sort((a, b) => probs[b] - probs[a] || a - b); // stable, descending
    const keep = logits.map(() => false);
    let before = 0; // probability of the strictly more likely tokens
    for (const i of order) {
      if (before >= p) break;
      keep[i] = true;
      before += probs[i];
    }
    return logits.map((z, i) => (keep[i] ? z : -Infinity));
  }

  function filtered(logits, temperature, k, p) {
    let z = logits.map((v) => v / temperature);
    z = topK(z, k);
    if (p < 1) z = topP(z, p);
    return softmax(z);
  }

  function sampling(root, data) {
    const V = data.logits.length;
    const temperature = range(0.05, 2, 0.05, 1);
    const k = range(1, V, 1, V);
    const p = range(0.05, 1, 0.01, 1);
    const outputs = [element("output"), element("output"), element("output")];
    const controls = element("div", { class: "tinyllm-controls" });
    controls.append(control("temperature ", temperature, outputs[0]), control("top-k ", k, outputs[1]),
                    control("top-p ", p, outputs[2]));
    const summary = element("p", { class: "tinyllm-summary" });
    const plot = element("div", { class: "tinyllm-plot" });
    root.append(element("p", { class: "tinyllm-context" }, `Next token after: ${data.context}`), controls, plot, summary);
    const shown = data.logits.map((_, i) => i).sort((a, b) => data.logits[b] - data.logits[a]).slice(0, data.show);
    function update() {
      const t = Number(temperature.value), kk = Number(k.value), pp = Number(p.value);
      outputs[0].textContent = t.toFixed(2);
      outputs[1].textContent = kk >= V ? `${V} (off)` : String(kk);
      outputs[2].textContent = pp >= 1 ? "1.00 (off)" : pp.toFixed(2);
      const probs = filtered(data.logits, t, kk, pp);
      const kept = probs.filter((q) => q > 0).length;
      const entropy = -probs.reduce((s, q) => (q > 0 ? s + q * Math.log2(q) : s), 0);
      summary.textContent = `${kept} of ${V} tokens can be sampled; the most likely has probability ` +
        `${Math.max(...probs).toFixed(3)}; entropy ${entropy.toFixed(2)} bits.`;
      root.tinyllmState = { temperature: t, k: kk, p: pp, probs: probs };
      const trace = {
        type: "bar", x: shown.map((i) => i), y: shown.map((i) => probs[i]),
        customdata: shown.map((i) => data.tokens[i]),
        marker: { color: shown.map((i) => (probs[i] > 0 ? "#1f77b4" : "#c7c7c7")) },
        hovertemplate: "token %{customdata}<br>probability %{y:.4f}<extra></extra>",
      };
      const layout = {
        height: 330, margin: { l: 60, r: 10, t: 10, b: 90 }, bargap: 0.15,
        xaxis: { type: "category", tickvals: shown, ticktext: shown.map((i) => data.tokens[i]), tickangle: -60 },
        yaxis: { title: { text: "probability" }, range: [0, 1] },
      };
      return Plotly.react(plot, [trace], themed(layout), PLOT_CONFIG);
    }
    [temperature, k, p].forEach((input) => input.addEventListener("input", update));
    return update();
  }

  /* ------------------------------------------------------------------ tokenizer */

  // BPETokenizer.encode: the text cut by GPT-2's pattern when the figure has one (tinyllm.bpe.pre_split;
  // its \s spelled out in the data as Python's regex package reads it), then each chunk on its own.
  function encode(text, merges, pattern) {
    if (!pattern) return bpeEncode(text, merges);
    return (text.match(new RegExp(pattern, "gu")) || []).flatMap((chunk) => bpeEncode(chunk, merges));
  }

  // bpe_encode: UTF-8 bytes, then every merge in the order it was learned.
  function bpeEncode(text, merges) {
    let ids = Array.from(new TextEncoder().encode(text));
    merges.forEach(([a, b], i) => {
      if (ids.length < 2) return;
      const merged = [];
      for (let j = 0; j < ids.length; j++) {
        if (j + 1 < ids.length && ids[j] === a && ids[j + 1] === b) {
          merged.push(256 + i);
          j++;
        } else {
          merged.push(ids[j]);
        }
      }
      ids = merged;
    });
    return ids;
  }

  function tokenizer(root, data) {
    const input = element("textarea", { rows: 3, "aria-label": "text to tokenize", spellcheck: "false" });
    input.value = data.example;
    const tokens = element("div", { class: "tinyllm-tokens" });
    const summary = element("p", { class: "tinyllm-summary" });
    const idList = element("pre", { class: "tinyllm-ids" });
    root.append(control("Type any text: ", input), tokens, summary, idList);
    function update() {
      const ids = encode(input.value, data.merges, data.pattern);
      tokens.replaceChildren(...ids.map((id, i) => {
        const span = element("span", { class: `tinyllm-token tinyllm-token-${i % 4}`, title: `id ${id}` },
                             data.tokens[id]);
        span.dataset.id = id;
        return span;
      }));
      const bytes = new TextEncoder().encode(input.value).length;
      summary.textContent = `${bytes} bytes → ${ids.length} tokens` +
        (ids.length ? ` (${(bytes / ids.length).toFixed(2)} bytes per token)` : "");
      idList.textContent = `[${ids.join(", ")}]`;
      root.tinyllmState = { ids: ids };
    }
    input.addEventListener("input", update);
    update();
  }

  /* ------------------------------------------------------------------ start */

  const RENDERERS = { heatmap: heatmap, sampling: sampling, tokenizer: tokenizer };
  const NEEDS_PLOTLY = new Set(["heatmap", "sampling"]);

  // The figure's data and the renderer of its kind; resolves once it is drawn.
  function render(root) {
    const kind = root.dataset.kind;
    try {
      const data = JSON.parse(root.querySelector("script.tinyllm-data").textContent);
      return Promise.resolve(RENDERERS[kind](root, data)).then(
        () => root.classList.add("tinyllm-ready"),
        (err) => console.error(`interactive ${kind} figure failed:`, err));
    } catch (err) {
      console.error(`interactive ${kind} figure failed:`, err);
      return Promise.resolve();
    }
  }

  // One <script> for Plotly, added when first needed; rejects if it cannot be loaded.
  let plotlyLoading = null;
  function loadPlotly() {
    if (typeof window.Plotly !== "undefined") return Promise.resolve();
    if (!plotlyLoading) {
      plotlyLoading = new Promise((resolve, reject) => {
        if (!window.tinyllmPlotly) {
          reject(new Error("the page names no Plotly script (window.tinyllmPlotly)"));
          return;
        }
        const script = element("script", { src: window.tinyllmPlotly });
        script.addEventListener("load", () => resolve());
        script.addEventListener("error", () => reject(new Error(`${window.tinyllmPlotly} did not load`)));
        document.head.append(script);
      });
    }
    return plotlyLoading;
  }

  // After the load event, when the browser has nothing more urgent to do (a timeout where
  // requestIdleCallback is missing): the text and pictures are on the screen before Plotly.
  function whenIdleAfterLoad(callback) {
    const idle = () => (window.requestIdleCallback ? requestIdleCallback(callback, { timeout: 2000 })
                                                   : setTimeout(callback, 200));
    if (document.readyState === "complete") idle();
    else window.addEventListener("load", idle, { once: true });
  }

  function start() {
    const roots = [...document.querySelectorAll(".tinyllm-interactive")];
    roots.filter((root) => !NEEDS_PLOTLY.has(root.dataset.kind)).forEach(render);
    const plotted = roots.filter((root) => NEEDS_PLOTLY.has(root.dataset.kind));
    if (!plotted.length) return;
    // Each figure is drawn in a task of its own, not in the one that ran Plotly's 1.5 MB: no long
    // stretch in which the page cannot answer the reader.
    const nextTask = () => new Promise((resolve) => setTimeout(resolve, 0));
    whenIdleAfterLoad(() => loadPlotly().then(async () => {
      followColourMode();
      for (const root of plotted) {
        await nextTask();
        await render(root);
      }
    }, (err) => {
      plotted.forEach((root) => console.error(
        `interactive ${root.dataset.kind} figure: Plotly is not loaded (${err.message}); showing the static picture`));
    }));
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
