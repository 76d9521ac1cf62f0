// The mmsearch search page. Plain JavaScript, no build step, nothing loaded from outside this server.
// It talks to the JSON API (/api/v1) only; thumbnails and originals come from the URLs the API returns.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const ui = {
    form: $("search-form"), collection: $("collection"), q: $("q"), chip: $("chip"), chipImg: $("chip-img"),
    chipText: $("chip-text"), chipClear: $("chip-clear"), uploadButton: $("upload-button"), upload: $("upload"),
    optionsToggle: $("options-toggle"), options: $("options"), filter: $("filter"), keywords: $("keywords"), filterError: $("filter-error"),
    filterCaret: $("filter-caret"), filterMessage: $("filter-message"), minScore: $("min-score"), rerank: $("rerank"),
    depth: $("depth"), pageSize: $("page-size"), exportJson: $("export-json"), exportCsv: $("export-csv"),
    status: $("status"), error: $("error"), empty: $("empty"), grid: $("grid"), sentinel: $("sentinel"),
    viewer: $("viewer"), viewerImg: $("viewer-img"), viewerNote: $("viewer-note"), viewerTitle: $("viewer-title"),
    viewerCaption: $("viewer-caption"), viewerMeta: $("viewer-meta"), viewerLike: $("viewer-like"),
    viewerOpen: $("viewer-open"), viewerPrev: $("viewer-prev"), viewerNext: $("viewer-next"),
    viewerClose: $("viewer-close"), tokenDialog: $("token-dialog"), tokenForm: $("token-form"), token: $("token"),
    drop: $("drop-overlay"),
  };

  const SCORE_TITLES = { vector: "first-stage score (cosine similarity)", keyword: "keyword match score",
    rrf: "fused score: reciprocal rank fusion of the vector and keyword lists" };
  const EAGER = 24;  // thumbnails fetched at once (the first screen); the rest load lazily as they scroll in
  const IMAGE_KEY = "mmsearch-query-image";
  let settings = { rerankers: [], rerank_default_depth: 128, rerank_max_depth: 256, max_top_k: 10000 };
  let token = sessionStorage.getItem("mmsearch-token") || "";
  let query = null;        // the query on screen: {collection, q, filter, keywords, minScore, rerank, depth, k, like, image}
  let hits = [];
  let scoreKind = "vector"; // what the server says hit.score is: "vector" (cosine), "keyword" or "rrf" (fused)
  let nextOffset = null;
  let loading = false;
  let generation = 0;      // bumps on every new query; late answers to older ones are dropped
  let viewerIndex = -1;
  // Timing of each query, for bench/web.py: Enter -> response -> first 20 thumbnails painted.
  const perf = (window.mmsearchPerf = []);

  class ApiError extends Error {
    constructor(code, status, message) { super(message); this.code = code; this.status = status; }
  }

  // -- the API -----------------------------------------------------------------------------------------------

  async function api(path, { method = "GET", json, form } = {}) {
    for (;;) {
      const headers = {};
      if (token) headers.Authorization = `Bearer ${token}`;
      let body;
      if (json !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(json); }
      if (form !== undefined) body = form;
      let response;
      try {
        response = await fetch(path, { method, headers, body });
      } catch (err) {
        throw new ApiError(0, "UNAVAILABLE", "the server cannot be reached");
      }
      if (response.status === 401 && await askToken()) continue;
      const text = await response.text();
      let data = null;
      try { data = text ? JSON.parse(text) : null; } catch (err) { /* not JSON */ }
      if (!response.ok) {
        const e = (data && data.error) || {};
        throw new ApiError(response.status, e.status || String(response.status), e.message || text || response.statusText);
      }
      return data;
    }
  }

  let tokenAsked = null;  // one prompt for all the calls that met a 401 at once
  function askToken() {
    if (!tokenAsked) {
      tokenAsked = new Promise((resolve) => {
        ui.token.value = "";
        ui.tokenDialog.showModal();
        ui.tokenDialog.addEventListener("close", () => {
          token = ui.token.value.trim();
          if (token) sessionStorage.setItem("mmsearch-token", token);
          tokenAsked = null;
          resolve(Boolean(token));
        }, { once: true });
      });
    }
    return tokenAsked;
  }

  // -- the query and the URL -----------------------------------------------------------------------------

  function readForm() {
    const minScore = ui.minScore.value.trim();
    return {
      collection: ui.collection.value,
      q: ui.q.value.trim(),
      filter: ui.filter.value.trim(),
      keywords: ui.keywords.value.trim(),
      minScore: minScore === "" ? null : Number(minScore),
      rerank: ui.rerank.value,
      depth: ui.depth.value ? Number(ui.depth.value) : 0,
      k: Number(ui.pageSize.value) || 40,
      like: query && query.like && !query.image ? query.like : null,
      image: query ? query.image : null,
    };
  }

  function toUrl(qy) {
    const p = new URLSearchParams();
    if (qy.collection) p.set("collection", qy.collection);
    if (qy.q) p.set("q", qy.q);
    if (qy.like) p.set("like", String(qy.like));
    if (qy.image) p.set("image", "1");
    if (qy.filter) p.set("filter", qy.filter);
    if (qy.keywords) p.set("keywords", qy.keywords);
    if (qy.minScore !== null) p.set("min_score", String(qy.minScore));
    if (qy.rerank) p.set("rerank", qy.rerank);
    if (qy.rerank && qy.depth) p.set("depth", String(qy.depth));
    if (qy.k !== 40) p.set("k", String(qy.k));
    const s = p.toString();
    return s ? `/?${s}` : "/";
  }

  function fromUrl() {
    const p = new URLSearchParams(location.search);
    const min = p.get("min_score");
    const like = p.get("like");
    return {
      collection: p.get("collection") || "",
      q: p.get("q") || "",
      filter: p.get("filter") || "",
      keywords: p.get("keywords") || "",
      minScore: min === null || min === "" || Number.isNaN(Number(min)) ? null : Number(min),
      rerank: p.get("rerank") || "",
      depth: Number(p.get("depth")) || 0,
      k: Number(p.get("k")) || 40,
      like: like && /^\d+$/.test(like) ? like : null,
      image: p.get("image") === "1" ? storedImage() : null,
    };
  }

  function fillForm(qy) {
    if (qy.collection && [...ui.collection.options].some((o) => o.value === qy.collection)) {
      ui.collection.value = qy.collection;
    }
    ui.q.value = qy.q;
    ui.filter.value = qy.filter;
    ui.keywords.value = qy.keywords;
    ui.minScore.value = qy.minScore === null ? "" : String(qy.minScore);
    if (qy.rerank && ![...ui.rerank.options].some((o) => o.value === qy.rerank)) {
      ui.rerank.append(new Option(shortName(qy.rerank), qy.rerank));  // not offered here; the server will say
    }
    ui.rerank.value = qy.rerank;
    ui.depth.value = qy.depth || "";
    if (![...ui.pageSize.options].some((o) => Number(o.value) === qy.k)) ui.pageSize.append(new Option(String(qy.k)));
    ui.pageSize.value = String(qy.k);
    showChip(qy);
  }

  function storedImage() {
    const data = sessionStorage.getItem(IMAGE_KEY);
    if (!data) return null;
    try { return dataUrlToBlob(data); } catch (err) { return null; }
  }

  function dataUrlToBlob(url) {
    const [head, b64] = url.split(",");
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    return new Blob([bytes], { type: head.slice(5).split(";")[0] || "application/octet-stream" });
  }

  // -- searching -----------------------------------------------------------------------------------------

  function startSearch({ push = true, t0 = performance.now() } = {}) {
    const qy = readForm();
    if (!qy.collection) return;
    query = qy;
    const url = toUrl(qy);
    if (push && url !== location.pathname + location.search) history.pushState(null, "", url);
    else if (!push) history.replaceState(null, "", url);
    generation += 1;
    hits = [];
    nextOffset = null;
    const asking = qy.q || qy.like || qy.image || qy.keywords;
    if (asking) fetchPage(0, t0);  // the request leaves first; the old grid goes while it is under way
    ui.grid.replaceChildren();
    hideFilterError();
    ui.error.hidden = true;
    ui.empty.hidden = true;
    if (!asking) {
      ui.status.textContent = "";
      showEmpty("Type what you are looking for, drop or paste an image, give keywords, or pick \u201cMore like this\u201d on a result.");
    }
  }

  function requestFor(qy, offset) {
    const body = { top_k: qy.k, offset, include_metadata: true, include_caption: true };
    if (qy.filter) body.filter = qy.filter;
    if (qy.keywords) body.keywords = qy.keywords;
    if (qy.minScore !== null && !Number.isNaN(qy.minScore)) body.min_score = qy.minScore;
    if (qy.rerank) {
      body.rerank = { model: qy.rerank, depth: qy.depth || 0 };
      if ((qy.like || qy.image) && qy.q) body.rerank_text = qy.q;
    }
    if (qy.image) {
      const form = new FormData();
      form.append("image", qy.image, "query");
      for (const [key, value] of Object.entries(body)) {
        if (key === "rerank") {
          form.append("rerank_model", value.model);
          form.append("rerank_depth", String(value.depth));
        } else form.append(key, String(value));
      }
      return { path: `/api/v1/collections/${encodeURIComponent(qy.collection)}/search/upload`, form };
    }
    if (qy.like) body.item_id = Number(qy.like);
    else if (qy.q) body.text = qy.q;
    return { path: `/api/v1/collections/${encodeURIComponent(qy.collection)}/search`, json: body };
  }

  async function fetchPage(offset, t0 = performance.now()) {
    const mine = generation;
    const qy = query;
    loading = true;
    ui.status.textContent = offset === 0 ? "Searching\u2026" : "Loading more\u2026";
    const { path, json, form } = requestFor(qy, offset);
    try {
      const result = await api(path, { method: "POST", json, form });
      if (mine !== generation) return;
      const tResponse = performance.now();
      const first = hits.length;
      hits.push(...result.hits);
      scoreKind = result.score_kind || "vector";
      nextOffset = result.next_offset;
      const record = offset === 0 ? { query: qy.q || (qy.like ? `like:${qy.like}` : "image"), t0, tResponse,
                                       encodeMs: result.timing.encode_ms, totalMs: result.timing.total_ms,
                                       hits: result.hits.length, painted20: null } : null;
      if (record) perf.push(record);
      const painted = render(result.hits, first, record);
      showStatus(result);
      // The next page is fetched once this one's first thumbnails are on screen, not while they load.
      painted.then(() => { if (mine === generation) { loading = false; maybeLoadMore(); } });
    } catch (err) {
      if (mine === generation) { loading = false; showError(err); }
    }
  }

  function maybeLoadMore() {
    if (loading || nextOffset === null || !query) return;
    const rect = ui.sentinel.getBoundingClientRect();
    if (rect.top < window.innerHeight + 800) fetchPage(nextOffset);
  }

  new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting)) maybeLoadMore();
  }, { rootMargin: "800px 0px" }).observe(ui.sentinel);

  function showStatus(result) {
    const t = result.timing;
    const more = nextOffset !== null ? ", more as you scroll" : "";
    const reranked = query.rerank && t.rerank_ms > 0 ? `, rerank ${fmtMs(t.rerank_ms)}` : "";
    const keywords = query.keywords && t.keyword_ms > 0 ? `, keywords ${fmtMs(t.keyword_ms)}` : "";
    if (hits.length === 0) {
      ui.status.textContent = "";
      const why = query.filter || query.minScore !== null || query.keywords
        ? " Loosen the filter, the keywords or the minimum score." : "";
      showEmpty(`No results.${why}`);
      return;
    }
    ui.status.textContent = `${hits.length} result${hits.length === 1 ? "" : "s"}${more} \u00b7 ` +
      `${fmtMs(t.total_ms)} (encode ${fmtMs(t.encode_ms)}, index ${fmtMs(t.ann_ms + t.filter_ms)}${keywords}${reranked})`;
  }

  const fmtMs = (ms) => (ms >= 100 ? `${Math.round(ms)} ms` : `${ms.toFixed(1)} ms`);

  function showEmpty(text) {
    ui.empty.textContent = text;
    ui.empty.hidden = false;
  }

  function showError(err) {
    ui.status.textContent = "";
    const m = /bad filter at column (\d+)/.exec(err.message || "");
    if (m && query && query.filter) {
      showFilterError(Number(m[1]), err.message);
      return;
    }
    ui.error.textContent = err.message || String(err);
    ui.error.hidden = false;
  }

  function showFilterError(column, message) {
    // The server counts columns from 1 in the filter as sent (trimmed, as the box shows it after a search).
    ui.filter.value = query.filter;
    ui.filterCaret.textContent = `${query.filter}\n${" ".repeat(Math.max(0, column - 1))}^`;
    ui.filterMessage.textContent = message;
    ui.filterError.hidden = false;
    ui.filter.setAttribute("aria-invalid", "true");
    ui.options.hidden = false;
    ui.optionsToggle.setAttribute("aria-expanded", "true");
    ui.filter.focus();
    try { ui.filter.setSelectionRange(column - 1, column); } catch (err) { /* not selectable */ }
  }

  function hideFilterError() {
    ui.filterError.hidden = true;
    ui.filter.removeAttribute("aria-invalid");
  }

  // -- the grid ------------------------------------------------------------------------------------------

  function render(page, first, record) {
    const fragment = document.createDocumentFragment();
    const waiting = [];
    page.forEach((hit, i) => {
      const index = first + i;
      const li = document.createElement("li");
      li.className = "card";
      li.dataset.id = String(hit.id);
      li.dataset.uri = hit.uri;
      li.dataset.score = String(hit.score);

      const open = document.createElement("button");
      open.type = "button";
      open.className = "thumb";
      open.setAttribute("aria-label", `Open result ${index + 1}: ${label(hit)}`);
      const img = document.createElement("img");
      img.alt = label(hit);
      img.decoding = "async";
      img.loading = index < EAGER ? "eager" : "lazy";
      if (hit.width && hit.height) { img.width = hit.width; img.height = hit.height; }
      img.addEventListener("error", () => open.classList.add("missing"), { once: true });
      img.fetchPriority = index < 20 ? "high" : "low";
      img.src = hit.thumbnail;
      if (index < 20) waiting.push(img);
      open.append(img);
      open.addEventListener("click", () => openViewer(index));
      li.append(open);

      const info = document.createElement("div");
      info.className = "info";
      const score = document.createElement("span");
      score.className = "score";
      score.title = SCORE_TITLES[scoreKind] || SCORE_TITLES.vector;
      score.textContent = hit.score.toFixed(scoreKind === "rrf" ? 4 : 3);
      info.append(score);
      if (hit.rerank_score !== null && hit.rerank_score !== undefined) {
        const itm = document.createElement("span");
        itm.className = "itm";
        itm.title = "reranker: probability that image and text match (ITM)";
        itm.textContent = `ITM ${(hit.rerank_score * 100).toFixed(hit.rerank_score >= 0.995 ? 1 : 0)}%`;
        info.append(itm);
      }
      const like = document.createElement("button");
      like.type = "button";
      like.className = "like";
      like.textContent = "More like this";
      like.setAttribute("aria-label", `More like result ${index + 1}`);
      like.addEventListener("click", () => moreLikeThis(hit));
      info.append(like);
      li.append(info);

      if (hit.caption) {
        const caption = document.createElement("p");
        caption.className = "caption";
        caption.textContent = hit.caption;
        li.append(caption);
      }
      fragment.append(li);
    });
    ui.grid.append(fragment);
    return whenPainted(waiting, record);
  }

  function whenPainted(images, record) {
    // Settled = loaded or failed; then two animation frames, so the frame holding them has been painted.
    // (Only the first page waits; a stuck image gives up after 5 s, so paging never stops.)
    const settled = images.map((img) => (img.complete ? Promise.resolve() : new Promise((resolve) => {
      img.addEventListener("load", resolve, { once: true });
      img.addEventListener("error", resolve, { once: true });
      setTimeout(resolve, 5000);
    })));
    return Promise.all(settled).then(() => new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(() => {
      if (record) {
        record.painted20 = performance.now();
        record.loaded = images.filter((img) => img.naturalWidth > 0).length;
      }
      resolve();
    }))));
  }

  function label(hit) {
    if (hit.caption) return hit.caption;
    const name = hit.uri.split(/[\\/]/).pop() || hit.uri;
    return name || `item ${hit.id}`;
  }

  const shortName = (model) => model.replace(/\/+$/, "").split(/[\\/]/).slice(-2).join("/");

  function moreLikeThis(hit) {
    if (ui.viewer.open) ui.viewer.close();
    query = { ...readForm(), like: String(hit.id), image: null, likeThumb: hit.thumbnail };
    ui.q.value = "";
    showChip({ like: String(hit.id), likeThumb: hit.thumbnail });
    startSearch();
  }

  // -- the query chip (an image or "more like this") -----------------------------------------------------

  let chipUrl = null;
  function showChip(qy) {
    if (chipUrl) { URL.revokeObjectURL(chipUrl); chipUrl = null; }
    let src = "", text = "", aria = "Clear";
    if (qy.image) {
      chipUrl = URL.createObjectURL(qy.image);
      [src, text, aria] = [chipUrl, "image", "Remove the query image"];
    } else if (qy.like) {
      [src, text, aria] = [qy.likeThumb || "", `like #${qy.like}`, `Stop searching like item ${qy.like}`];
    }
    ui.chip.hidden = !text;
    ui.chipImg.hidden = !src;
    if (src) ui.chipImg.src = src; else ui.chipImg.removeAttribute("src");
    ui.chipText.textContent = text;
    ui.chipClear.setAttribute("aria-label", aria);
    ui.q.placeholder = text ? "Text for the reranker (optional)"
      : "Describe a picture in any language, or drop / paste an image";
  }

  function clearChip() {
    sessionStorage.removeItem(IMAGE_KEY);
    if (query) { query.image = null; query.like = null; }
    showChip({});
    ui.q.focus();
  }

  function useImage(file) {
    if (!file || !file.type.startsWith("image/")) {
      ui.error.textContent = "That is not an image file.";
      ui.error.hidden = false;
      return;
    }
    const reader = new FileReader();
    reader.onload = () => {  // kept for a reload of this tab (the URL cannot hold the image)
      try { sessionStorage.setItem(IMAGE_KEY, reader.result); } catch (err) { sessionStorage.removeItem(IMAGE_KEY); }
    };
    reader.readAsDataURL(file);
    query = { ...readForm(), like: null, image: file };
    ui.q.value = "";
    showChip(query);
    startSearch();
  }

  // -- the viewer ----------------------------------------------------------------------------------------

  function openViewer(index) {
    const hit = hits[index];
    if (!hit) return;
    viewerIndex = index;
    ui.viewerImg.src = hit.thumbnail;  // at once; the original replaces it when it arrives
    ui.viewerImg.alt = label(hit);
    ui.viewerNote.textContent = "";
    const original = new Image();
    original.onload = () => { if (viewerIndex === index) ui.viewerImg.src = original.src; };
    original.onerror = () => {
      if (viewerIndex === index) ui.viewerNote.textContent = "The original is not available from this server; showing the thumbnail.";
    };
    original.src = hit.image;
    ui.viewerOpen.href = hit.image;
    ui.viewerTitle.textContent = hit.uri.split(/[\\/]/).pop() || `item ${hit.id}`;
    ui.viewerCaption.textContent = hit.caption || "";
    const rows = [["id", hit.id], ["uri", hit.uri], ["size", hit.width && hit.height ? `${hit.width} \u00d7 ${hit.height}` : "?"],
      [scoreKind === "vector" ? "score" : `score (${scoreKind})`, hit.score.toFixed(4)]];
    if (hit.vector_score !== null && hit.vector_score !== undefined) rows.push(["vector score", hit.vector_score.toFixed(4)]);
    if (hit.keyword_score !== null && hit.keyword_score !== undefined) rows.push(["keyword score", hit.keyword_score.toFixed(4)]);
    if (hit.rerank_score !== null && hit.rerank_score !== undefined) rows.push(["ITM P(match)", hit.rerank_score.toFixed(4)]);
    for (const [key, value] of Object.entries(hit.metadata || {})) {
      rows.push([`meta.${key}`, typeof value === "object" ? JSON.stringify(value) : String(value)]);
    }
    rows.push(["sha256", hit.sha256]);
    ui.viewerMeta.replaceChildren(...rows.flatMap(([k, v]) => {
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = String(v);
      return [dt, dd];
    }));
    ui.viewerPrev.disabled = index === 0;
    ui.viewerNext.disabled = index >= hits.length - 1;
    if (!ui.viewer.open) ui.viewer.showModal();
    if (index >= hits.length - 3) maybeLoadMore();
  }

  function focusCard(index) {
    const card = ui.grid.children[index];
    if (card) card.querySelector(".thumb").focus();
  }

  // -- export --------------------------------------------------------------------------------------------

  function download(name, type, text) {
    const url = URL.createObjectURL(new Blob([text], { type }));
    const a = document.createElement("a");
    a.href = url;
    a.download = name;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }

  const exported = () => hits.map((h, i) => ({ rank: i + 1, id: h.id, uri: h.uri, score: h.score,
    rerank_score: h.rerank_score, width: h.width, height: h.height, caption: h.caption || "",
    sha256: h.sha256, metadata: h.metadata || {} }));

  function csvCell(value) {
    let s = value === null || value === undefined ? "" : typeof value === "object" ? JSON.stringify(value) : String(value);
    if (typeof value === "string" && /^[=+\-@\t\r]/.test(s)) s = `'${s}`;  // not a formula in a spreadsheet
    return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  }

  ui.exportJson.addEventListener("click", () => {
    download("mmsearch-results.json", "application/json",
             JSON.stringify({ query: query && { ...query, image: Boolean(query.image) }, results: exported() }, null, 1));
  });
  ui.exportCsv.addEventListener("click", () => {
    const cols = ["rank", "id", "uri", "score", "rerank_score", "width", "height", "caption", "sha256", "metadata"];
    const lines = [cols.join(","), ...exported().map((r) => cols.map((c) => csvCell(r[c])).join(","))];
    download("mmsearch-results.csv", "text/csv", lines.join("\r\n") + "\r\n");
  });

  // -- events --------------------------------------------------------------------------------------------

  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const t0 = performance.now();
    if (query && !query.image && !query.like) query = null;
    startSearch({ t0 });
  });
  ui.collection.addEventListener("change", () => {
    if (query) { query.like = null; }
    showChip(query || {});
    startSearch();
  });
  for (const el of [ui.rerank, ui.pageSize]) el.addEventListener("change", () => query && startSearch());
  for (const el of [ui.filter, ui.keywords, ui.minScore, ui.depth]) {
    el.addEventListener("keydown", (event) => { if (event.key === "Enter") { event.preventDefault(); startSearch(); } });
  }
  ui.filter.addEventListener("input", hideFilterError);
  ui.chipClear.addEventListener("click", clearChip);
  ui.uploadButton.addEventListener("click", () => ui.upload.click());
  ui.upload.addEventListener("change", () => { if (ui.upload.files[0]) useImage(ui.upload.files[0]); ui.upload.value = ""; });
  ui.optionsToggle.addEventListener("click", () => {
    const show = ui.options.hidden;
    ui.options.hidden = !show;
    ui.optionsToggle.setAttribute("aria-expanded", String(show));
  });

  document.addEventListener("paste", (event) => {
    const item = [...(event.clipboardData || {}).items || []].find((i) => i.type.startsWith("image/"));
    if (item) { event.preventDefault(); useImage(item.getAsFile()); }
  });
  let dragDepth = 0;
  document.addEventListener("dragenter", (event) => {
    if ([...event.dataTransfer.types].includes("Files")) { dragDepth += 1; ui.drop.hidden = false; }
  });
  document.addEventListener("dragleave", () => { dragDepth = Math.max(0, dragDepth - 1); if (!dragDepth) ui.drop.hidden = true; });
  document.addEventListener("dragover", (event) => event.preventDefault());
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    dragDepth = 0;
    ui.drop.hidden = true;
    const file = [...event.dataTransfer.files].find((f) => f.type.startsWith("image/"));
    if (file) useImage(file);
  });

  document.addEventListener("keydown", (event) => {
    const typing = /^(INPUT|TEXTAREA|SELECT)$/.test(document.activeElement.tagName);
    if (ui.viewer.open) {
      if (event.key === "ArrowLeft" && viewerIndex > 0) openViewer(viewerIndex - 1);
      else if (event.key === "ArrowRight" && viewerIndex < hits.length - 1) openViewer(viewerIndex + 1);
      return;
    }
    if (event.key === "/" && !typing) { event.preventDefault(); ui.q.focus(); ui.q.select(); }
  });
  ui.viewer.addEventListener("close", () => { focusCard(viewerIndex); viewerIndex = -1; });
  ui.viewerClose.addEventListener("click", () => ui.viewer.close());
  ui.viewer.addEventListener("click", (event) => { if (event.target === ui.viewer) ui.viewer.close(); });
  ui.viewerPrev.addEventListener("click", () => openViewer(viewerIndex - 1));
  ui.viewerNext.addEventListener("click", () => openViewer(viewerIndex + 1));
  ui.viewerLike.addEventListener("click", () => { const hit = hits[viewerIndex]; if (hit) moreLikeThis(hit); });

  window.addEventListener("popstate", () => {
    const qy = fromUrl();
    fillForm(qy);
    query = qy;
    startSearch({ push: false });
  });

  // -- start ---------------------------------------------------------------------------------------------

  async function init() {
    try {
      const [list, conf] = await Promise.all([api("/api/v1/collections"), api("/api/v1/settings")]);
      settings = conf;
      for (const model of settings.rerankers) ui.rerank.append(new Option(shortName(model), model));
      if (!settings.rerankers.length) {
        ui.rerank.disabled = true;
        ui.rerank.title = "this server allows no reranker (allow_models)";
      }
      ui.depth.placeholder = String(settings.rerank_default_depth);
      ui.depth.max = String(settings.rerank_max_depth);
      for (const c of list.collections) {
        ui.collection.append(new Option(`${c.name} (${c.items.toLocaleString()})`, c.name));
      }
      if (!list.collections.length) {
        showEmpty("No collections yet. Index some images: mmsearch index PHOTOS/ --collection photos --model MODEL");
        return;
      }
    } catch (err) {
      showError(err);
      return;
    }
    const qy = fromUrl();
    if (qy.image === null && new URLSearchParams(location.search).get("image") === "1") {
      ui.error.textContent = "The query image is not kept past this browser tab; drop or paste it again.";
      ui.error.hidden = false;
    }
    fillForm(qy);
    query = qy;
    if (window.innerWidth < 700) { ui.options.hidden = true; ui.optionsToggle.setAttribute("aria-expanded", "false"); }
    startSearch({ push: false });
  }

  init();
})();
