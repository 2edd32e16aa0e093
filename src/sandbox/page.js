// The sandbox page: polls /api/state?since=N every second and draws spaces → threads →
// messages, appending what is new. Message texts come from log lines, so they are
// attacker-controlled: every node is built with createElement/createTextNode, never
// from an HTML string, and a link's href is set only to a parsed http(s)/mailto URL.
(function () {
  "use strict";

  // ---- Chat markup → DOM -------------------------------------------------------------
  // *bold*, _italic_, ~strike~, `code`, ```code block```, <url|label>, <url>, bare
  // http(s) links; everything else verbatim (newlines kept by CSS white-space).
  // One left-to-right pass: each piece of text is consumed by exactly one rule, link
  // labels and code are plain text, so no rule ever runs over another rule's output.
  // Elements produced: b, i, s, code, pre, a (only attribute: href).

  var STYLE = { "*": "b", "_": "i", "~": "s" };
  var PROTOCOLS = { "http:": true, "https:": true, "mailto:": true };

  function isWord(c) { return c !== undefined && c !== "" && /[A-Za-z0-9_]/.test(c); }
  function isSpace(c) { return c !== undefined && c !== "" && /\s/.test(c); }

  function text(s) { return document.createTextNode(s); }

  // The normalised URL when `s` is an http(s) or mailto URL; null otherwise.
  function safeUrl(s) {
    if (!/^(https?:\/\/|mailto:)/i.test(s) || /[\u0000-\u0020\u007f-\u009f<>"\\]/.test(s)) return null;
    var u;
    try { u = new URL(s); } catch (e) { return null; }
    return PROTOCOLS[u.protocol] === true ? u.href : null;
  }

  function link(href, label) {
    var a = document.createElement("a");
    a.href = href;
    a.appendChild(text(label));
    return a;
  }

  // `code` starting at i: the index of its closing backtick (same line), or -1.
  function codeSpan(s, i) {
    var j = i + 1, n = s.length;
    while (j < n && s[j] !== "`" && s[j] !== "\n") j++;
    return j < n && s[j] === "`" && j > i + 1 ? j : -1;
  }

  // A bare link starting at i: {end, node}, or null.
  function bareUrl(s, i) {
    if (isWord(i > 0 ? s[i - 1] : "")) return null;
    var head = s.substr(i, 8).toLowerCase();
    var scheme = head === "https://" ? 8 : head.slice(0, 7) === "http://" ? 7 : 0;
    if (scheme === 0) return null;
    var j = i + scheme, n = s.length;
    while (j < n && !/[\s<>"`|\u0000-\u001f\u007f]/.test(s[j])) j++;
    // Trailing punctuation ends the sentence, not the URL; so does an unbalanced ")".
    for (;;) {
      var last = s[j - 1];
      if (".,;:!?'*_~".indexOf(last) >= 0) { j--; continue; }
      if (last === ")") {
        var u = s.slice(i, j);
        if (u.split("(").length < u.split(")").length) { j--; continue; }
      }
      break;
    }
    if (j <= i + scheme) return null;
    var raw = s.slice(i, j), href = safeUrl(raw);
    return href === null ? null : { end: j, node: link(href, raw) };
  }

  // The markup of one piece of text without code blocks, drawn into `parent`.
  // `styles` holds the style characters already open (a style does not nest in itself).
  function Inline(s) {
    this.s = s;
    this.noGt = -1;      // a label scan from before this index found no ">" on its line
    this.noClose = {};   // style char → a closer search failed up to this index
  }

  // <url|label> or <url> starting at i: {end, node}, or null ("<" is then plain text).
  // A well-formed <...> whose URL is not allowed is kept whole as plain text.
  Inline.prototype.angle = function (i) {
    var s = this.s, n = s.length, j = i + 1;
    while (j < n && "|><\n".indexOf(s[j]) < 0 && !isSpace(s[j])) j++;
    if (j >= n || j === i + 1 || (s[j] !== "|" && s[j] !== ">")) return null;
    var url = s.slice(i + 1, j), label = url, end;
    if (s[j] === ">") {
      end = j + 1;
    } else {
      if (j < this.noGt) return null;
      var k = j + 1;
      while (k < n && s[k] !== ">" && s[k] !== "\n") k++;
      if (k >= n || s[k] !== ">") { this.noGt = k; return null; }
      if (k > j + 1) label = s.slice(j + 1, k);
      end = k + 1;
    }
    var href = safeUrl(url);
    return { end: end, node: href === null ? text(s.slice(i, end)) : link(href, label) };
  };

  // The token (code span, link) starting at i: {end, node}, or null.
  Inline.prototype.token = function (i) {
    var s = this.s, c = s[i];
    if (c === "`") {
      var j = codeSpan(s, i);
      if (j < 0) return null;
      var code = document.createElement("code");
      code.appendChild(text(s.slice(i + 1, j)));
      return { end: j + 1, node: code };
    }
    if (c === "<") return this.angle(i);
    if (c === "h" || c === "H") return bareUrl(s, i);
    return null;
  };

  Inline.prototype.opens = function (i, styles) {
    var s = this.s, c = s[i], before = i > 0 ? s[i - 1] : "", after = i + 1 < s.length ? s[i + 1] : "";
    return styles.indexOf(c) < 0 && !isWord(before) && before !== c &&
      after !== "" && !isSpace(after) && after !== c;
  };

  // The closing `c` for a style opened at i (same line, past code spans and links), or -1.
  Inline.prototype.closer = function (i, c, limit) {
    var s = this.s;
    if (i < (this.noClose[c] || -1)) return -1;
    for (var k = i + 1; k < limit && s[k] !== "\n"; k++) {
      var ch = s[k];
      if (ch === c && k > i + 1 && !isSpace(s[k - 1]) && !isWord(k + 1 < s.length ? s[k + 1] : "")) return k;
      if (ch === "`" || ch === "<" || ch === "h" || ch === "H") {
        var t = this.token(k);
        if (t !== null && t.end <= limit) k = t.end - 1;
      }
    }
    this.noClose[c] = k;
    return -1;
  };

  Inline.prototype.draw = function (from, to, parent, styles) {
    var s = this.s, plain = from, i = from;
    var flush = function (upto) {
      if (upto > plain) parent.appendChild(text(s.slice(plain, upto)));
    };
    while (i < to) {
      var c = s[i], t = null;
      if (c === "`" || c === "<" || c === "h" || c === "H") {
        t = this.token(i);
        if (t !== null && t.end > to) t = null;
      }
      if (t !== null) {
        flush(i);
        parent.appendChild(t.node);
        i = plain = t.end;
        continue;
      }
      if (STYLE[c] !== undefined && this.opens(i, styles)) {
        var k = this.closer(i, c, to);
        if (k >= 0) {
          flush(i);
          var e = document.createElement(STYLE[c]);
          this.draw(i + 1, k, e, styles + c);
          parent.appendChild(e);
          i = plain = k + 1;
          continue;
        }
      }
      i++;
    }
    flush(to);
  };

  function drawInline(s, parent) {
    if (s !== "") new Inline(s).draw(0, s.length, parent, "");
  }

  // Chat markup → a DocumentFragment of text nodes and b, i, s, code, pre, a elements.
  function chattailMarkup(source) {
    var s = String(source), frag = document.createDocumentFragment(), i = 0;
    for (;;) {
      var a = s.indexOf("```", i), b = a < 0 ? -1 : s.indexOf("```", a + 3);
      if (b < 0) break;
      var body = s.slice(a + 3, b).replace(/^\n/, "").replace(/\n$/, "");
      if (body === "") {
        drawInline(s.slice(i, b + 3), frag);
      } else {
        drawInline(s.slice(i, a), frag);
        var pre = document.createElement("pre"), code = document.createElement("code");
        code.appendChild(text(body));
        pre.appendChild(code);
        frag.appendChild(pre);
      }
      i = b + 3;
    }
    drawInline(s.slice(i), frag);
    return frag;
  }
  window.chattailMarkup = chattailMarkup;

  // ---- The page ----------------------------------------------------------------------

  function el(tag, cls, content) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (content !== undefined) e.textContent = content;
    return e;
  }
  var timeFormat = new Intl.DateTimeFormat([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  function clock(ms) {
    var d = new Date(ms);
    return isFinite(d.getTime()) ? timeFormat.format(d) : "--:--:--";
  }
  function plural(n, one, many) { return n + " " + (n === 1 ? one : many); }
  function statusLabel(status) { return status === 0 ? "dropped" : String(status); }

  // Inserts `row` (ordered by `seq`) among the rows that end `container`.
  function insertBySeq(container, row, seq) {
    row.chattailSeq = seq;
    var ref = null, c = container.lastChild;
    while (c !== null && c.chattailSeq > seq) { ref = c; c = c.previousSibling; }
    container.insertBefore(row, ref);
  }

  var root, statusEl, droppedEl, model;

  function reset() {
    model = { instance: null, since: 0, spaces: new Map(), names: [], messages: 0 };
    root.textContent = "";
    root.appendChild(el("p", "empty", "No message yet. Point a webhook URL at this sandbox and post."));
    droppedEl.hidden = true;
  }

  function space(name) {
    var sp = model.spaces.get(name);
    if (sp !== undefined) return sp;
    // Keyed by strings from log lines: Maps, so "__proto__" is just another key.
    sp = { name: name, threads: new Map(), byKey: new Map(), statuses: new Map(), loose: [] };
    sp.el = el("section", "space");
    sp.el.setAttribute("data-space", name);
    sp.head = el("h2");
    sp.head.appendChild(text("spaces/" + name));
    sp.threadBadge = sp.head.appendChild(el("span", "badge threads", "0 threads"));
    sp.el.appendChild(sp.head);
    sp.threadsEl = sp.el.appendChild(el("div", "threads"));
    sp.looseEl = sp.el.appendChild(el("div", "loose"));
    if (model.names.length === 0) root.textContent = "";
    var at = 0;
    while (at < model.names.length && model.names[at] < name) at++;
    root.insertBefore(sp.el, at < model.names.length ? model.spaces.get(model.names[at]).el : null);
    model.names.splice(at, 0, name);
    model.spaces.set(name, sp);
    return sp;
  }

  function setKey(sp, t, key) {
    t.key = key;
    t.el.setAttribute("data-key", key);
    t.keyEl.className = "key";
    t.keyEl.textContent = key;
    if (sp.byKey.has(key)) return;
    sp.byKey.set(key, t);
    // Refused requests for this key that came before its thread move into it.
    sp.loose = sp.loose.filter(function (r) {
      if (r.key !== key) return true;
      insertBySeq(t.el, r.row, r.seq);
      return false;
    });
  }

  function thread(sp, m) {
    var t = sp.threads.get(m.thread);
    if (t === undefined) {
      t = { key: null, count: 0 };
      t.el = el("article", "thread");
      t.el.setAttribute("data-key", "");
      t.el.setAttribute("data-count", "0");
      t.el.setAttribute("data-thread", m.thread);
      var head = t.el.appendChild(el("div", "head"));
      t.keyEl = head.appendChild(el("span", "key nokey", "no thread key"));
      t.countEl = head.appendChild(el("span", "count", "0 messages"));
      sp.threads.set(m.thread, t);
      sp.threadBadge.textContent = plural(sp.threads.size, "thread", "threads");
      sp.threadsEl.appendChild(t.el);
    }
    if (t.key === null && typeof m.key === "string") setKey(sp, t, m.key);
    return t;
  }

  var ENTITIES = { amp: "&", lt: "<", gt: ">", quot: "\"", "#39": "'" };

  // Card text is Chat's HTML subset. Only line breaks are drawn (as <br> elements) and
  // the five entities decoded; any other tag stays text. Nothing is parsed as HTML.
  function cardText(s, parent) {
    var parts = String(s === undefined || s === null ? "" : s).split(/<br\s*\/?>/i);
    parts.forEach(function (p, i) {
      if (i > 0) parent.appendChild(document.createElement("br"));
      parent.appendChild(text(p.replace(/&(amp|lt|gt|quot|#39);/g, function (_, e) { return ENTITIES[e]; })));
    });
  }

  function cardButton(b) {
    var label = String(b && b.text !== undefined && b.text !== null ? b.text : "");
    var open = b && b.onClick && b.onClick.openLink;
    var href = open ? safeUrl(String(open.url)) : null;
    if (href === null) return el("span", "card-button", label);
    var a = link(href, label);
    a.className = "card-button";
    a.rel = "noopener noreferrer";
    return a;
  }

  // One cardsV2 entry: the header, labelled fields, paragraphs and link buttons.
  function drawCard(entry) {
    var card = entry && typeof entry.card === "object" && entry.card !== null ? entry.card : {};
    var box = el("div", "card");
    var header = card.header || {};
    if (header.title !== undefined) box.appendChild(el("div", "card-title", String(header.title)));
    if (header.subtitle !== undefined) box.appendChild(el("div", "card-subtitle", String(header.subtitle)));
    (Array.isArray(card.sections) ? card.sections : []).forEach(function (section) {
      var sec = box.appendChild(el("div", "card-section"));
      (Array.isArray(section && section.widgets) ? section.widgets : []).forEach(function (w) {
        if (!w || typeof w !== "object") return;
        if (w.decoratedText) {
          var f = sec.appendChild(el("div", "card-field"));
          f.appendChild(el("div", "card-label", String(w.decoratedText.topLabel || "")));
          cardText(w.decoratedText.text, f.appendChild(el("div", "card-value")));
        } else if (w.textParagraph) {
          cardText(w.textParagraph.text, sec.appendChild(el("div", "card-paragraph")));
        } else if (w.buttonList && Array.isArray(w.buttonList.buttons)) {
          var row = sec.appendChild(el("div", "card-buttons"));
          w.buttonList.buttons.forEach(function (b) { row.appendChild(cardButton(b)); });
        }
      });
    });
    return box;
  }

  function addMessage(m) {
    var sp = space(String(m.space)), t = thread(sp, { thread: String(m.thread), key: m.key });
    var row = el("div", "message");
    var meta = [clock(m.time)];
    if (m.host) meta.push("host " + m.host);
    var rules = Array.isArray(m.rule) ? m.rule : m.rule ? [m.rule] : [];
    if (rules.length > 0) meta.push("rule " + rules.join(", "));
    var metaEl = row.appendChild(el("div", "meta", meta.join(" · ")));
    if (m.name) metaEl.title = String(m.name);
    row.appendChild(el("div", "body")).appendChild(chattailMarkup(m.text === undefined || m.text === null ? "" : m.text));
    if (Array.isArray(m.cards)) m.cards.forEach(function (c) { row.appendChild(drawCard(c)); });
    insertBySeq(t.el, row, m.seq);
    t.count++;
    t.el.setAttribute("data-count", String(t.count));
    t.countEl.textContent = plural(t.count, "message", "messages");
    model.messages++;
  }

  function addRefused(r) {
    var sp = space(String(r.space)), status = Number(r.status);
    var row = el("div", "refused s" + status);
    row.appendChild(el("span", "status", statusLabel(status)));
    row.appendChild(text(clock(r.time) + " · " + (r.message || "")));
    var key = typeof r.key === "string" ? r.key : null;
    if (key !== null && sp.byKey.has(key)) {
      insertBySeq(sp.byKey.get(key).el, row, r.seq);
    } else {
      sp.looseEl.appendChild(row);
      if (key !== null) sp.loose.push({ key: key, seq: r.seq, row: row });
    }
    var badge = sp.statuses.get(status);
    if (badge === undefined) {
      badge = { count: 0, el: el("span", "badge " + (status === 429 ? "warn" : "bad")) };
      badge.el.setAttribute("data-status", String(status));
      var next = null; // badges in status order
      sp.statuses.forEach(function (b, s) { if (s > status && (next === null || s < next)) next = s; });
      sp.head.insertBefore(badge.el, next === null ? null : sp.statuses.get(next).el);
      sp.statuses.set(status, badge);
    }
    badge.count++;
    badge.el.textContent = badge.count + " × " + statusLabel(status);
  }

  function apply(d) {
    var ms = Array.isArray(d.messages) ? d.messages : [], rs = Array.isArray(d.refused) ? d.refused : [];
    var i = 0, j = 0;
    // Both lists are in seq order: merge them so each thread shows what happened in order.
    while (i < ms.length || j < rs.length) {
      var takeMessage = j >= rs.length || (i < ms.length && ms[i].seq < rs[j].seq);
      var item = takeMessage ? ms[i++] : rs[j++];
      if (!(item && item.seq > model.since)) continue;
      try {
        if (takeMessage) addMessage(item); else addRefused(item);
      } catch (e) {
        if (window.console) console.error("chattail sandbox: item", item, e);
      }
      model.since = item.seq;
    }
    if (typeof d.seq === "number" && d.seq > model.since) model.since = d.seq;

    var notes = [], kept = d.kept || {}, dropped = d.dropped || {};
    if (dropped.messages > 0) {
      notes.push(plural(dropped.messages, "older message", "older messages") + " dropped (the sandbox keeps the newest " + kept.messages + ")");
    }
    if (dropped.refused > 0) {
      notes.push(plural(dropped.refused, "older refused request", "older refused requests") + " dropped (the sandbox keeps the newest " + kept.refused + ")");
    }
    droppedEl.textContent = notes.join("; ");
    droppedEl.hidden = notes.length === 0;
    statusEl.className = "hint";
    statusEl.textContent = plural(Number(d.requests) || 0, "request", "requests") + " · " +
      plural(model.messages, "message", "messages") + " shown · updated " + clock(Date.now());
  }

  function poll() {
    var asked = model.since, again = 1000;
    fetch("/api/state?since=" + asked, { cache: "no-store" })
      .then(function (r) {
        if (!r.ok) throw new Error("the sandbox answered HTTP " + r.status);
        return r.json();
      })
      .then(function (d) {
        if (model.instance !== null && d.instance !== model.instance) {
          // A new sandbox process: what we have is from the old one.
          reset();
          again = 0;
          return;
        }
        model.instance = d.instance;
        apply(d);
      })
      .catch(function (e) {
        statusEl.className = "hint down";
        statusEl.textContent = (e instanceof TypeError ? "sandbox unreachable" : String(e.message || e)) + "; retrying";
      })
      .then(function () { setTimeout(poll, again); });
  }

  function start() {
    root = document.getElementById("spaces");
    statusEl = document.getElementById("status");
    droppedEl = document.getElementById("dropped");
    if (root === null || statusEl === null || droppedEl === null) return; // not the page (e.g. a test harness)
    reset();
    poll();
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
