/* The workspace's pages, enhanced: the chat view over the JSON API (streamed replies read
 * from Server-Sent Events), the GPT builder, settings and admin. Plain JavaScript, no
 * framework. Text from people and models is only ever set as textContent; the one HTML we
 * insert is a reply's `html`, which the server rendered and sanitised. */
"use strict";

(() => {
  const API = "/workspace/api";
  const $ = (selector, root = document) => root.querySelector(selector);
  const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));

  function meta(name) {
    const found = document.querySelector(`meta[name="${name}"]`);
    return found ? found.content : "";
  }

  const REGION = meta("domicile-region");
  const REGION_NAME = meta("domicile-region-name") || "this region";

  function csrfToken() {
    const name = `domicile_csrf_${REGION}=`;
    for (const part of document.cookie.split(";")) {
      const cookie = part.trim();
      if (cookie.startsWith(name)) return decodeURIComponent(cookie.slice(name.length));
    }
    return "";
  }

  /** An element with attributes and text (never HTML). */
  function el(tag, attributes = {}, text) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attributes)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "className") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    if (text !== undefined) node.textContent = text;
    return node;
  }

  class ApiError extends Error {
    constructor(status, message, code, retryAfter) {
      super(message);
      this.status = status;
      this.code = code;
      this.retryAfter = retryAfter;
    }
  }

  async function errorFrom(response) {
    let message = "";
    let code = "";
    try {
      const body = await response.json();
      message = (body.error && body.error.message) || "";
      code = (body.error && body.error.code) || "";
    } catch (_) { /* not JSON: the words below say enough */ }
    return new ApiError(response.status, message, code, response.headers.get("retry-after"));
  }

  function headers(json) {
    const result = { "x-csrf-token": csrfToken(), accept: "application/json" };
    if (json) result["content-type"] = "application/json";
    return result;
  }

  /** A JSON API call; throws ApiError with the server's words. */
  async function api(method, path, body) {
    let response;
    try {
      response = await fetch(API + path, {
        method, credentials: "same-origin", headers: headers(body !== undefined),
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (_) {
      throw new ApiError(0, "", "network");
    }
    if (!response.ok) throw await errorFrom(response);
    return response.status === 204 ? null : response.json();
  }

  /** What went wrong, in words a member can act on. */
  function describe(error) {
    if (!(error instanceof ApiError)) return "Something went wrong in this page. Reload it and try again.";
    const wait = error.retryAfter ? ` Try again in ${error.retryAfter} seconds.` : " Try again in a moment.";
    switch (error.status) {
      case 0: return "Could not reach the server. Check your connection and try again.";
      case 401: return "Your session has ended. Sign in again to continue.";
      case 409: return "A reply is still being written in this conversation. Wait for it to finish, then try again.";
      case 413: return error.message || "That file is too large for this workspace.";
      case 429: return `Too many requests.${wait}`;
      case 503: return `No model in ${REGION_NAME} can answer right now. Try again in a moment.`;
      case 507: return "The workspace's storage is full. Ask an admin to make room.";
      default:
        if (error.status >= 500) return "The server had a problem answering. Try again in a moment.";
        return error.message || `The request was refused (${error.status}).`;
    }
  }

  function showError(box, error) {
    if (!box) return;
    if (error) {
      box.textContent = typeof error === "string" ? error : describe(error);
      box.hidden = false;
      if (error instanceof ApiError && error.status === 401) {
        box.append(" ", el("a", { href: "/workspace/login" }, "Sign in"));
      }
    } else {
      box.textContent = "";
      box.hidden = true;
    }
  }

  /** Upload one file with progress (fetch has no upload progress): the stored file. */
  function upload(file, progress) {
    return new Promise((resolve, reject) => {
      const request = new XMLHttpRequest();
      request.open("POST", `${API}/files`);
      request.setRequestHeader("x-csrf-token", csrfToken());
      request.responseType = "json";
      request.upload.addEventListener("progress", (event) => {
        if (progress && event.lengthComputable) {
          progress.max = event.total;
          progress.value = event.loaded;
        }
      });
      request.addEventListener("load", () => {
        const body = request.response || {};
        if (request.status === 201) {
          resolve(body);
        } else {
          reject(new ApiError(request.status, (body.error && body.error.message) || "",
            (body.error && body.error.code) || "", request.getResponseHeader("retry-after")));
        }
      });
      request.addEventListener("error", () => reject(new ApiError(0, "", "network")));
      request.addEventListener("abort", () => reject(new ApiError(0, "", "aborted")));
      const form = new FormData();
      form.append("file", file, file.name);
      request.send(form);
    });
  }

  // -- the chat view ----------------------------------------------------------------------------

  function chatPage() {
    const layout = $(".chat-layout");
    const messages = $("#messages");
    const emptyState = $("#empty-state");
    const chatError = $("#chat-error");
    const form = $("#composer-form");
    const composer = $("#composer");
    const sendButton = $("#send");
    const stopButton = $("#stop");
    const attach = $("#attach");
    const attachmentsBox = $("#attachments");
    const modelPicker = $("#model");
    const gptPicker = $("#gpt");
    const search = $("#search");
    const list = $("#conversations");
    const editingNote = $("#editing-note");

    const fileInfo = new Map(); // file id → {name, media_type}
    const contentOf = new WeakMap(); // article → the message's text (for copy and edit)
    let conversationId = layout.dataset.conversationId || "";
    let streaming = null; // {controller, article}
    let attachments = []; // {file, element, promise, stored}
    let editing = null; // {article, parentId}

    // -- pickers
    const savedModel = localStorage.getItem("domicile-model");
    if (savedModel && hasOption(modelPicker, savedModel)) modelPicker.value = savedModel;
    function hasOption(select, value) {
      return Array.from(select.options).some((option) => option.value === value);
    }
    function followGpt() {
      const chosen = gptPicker.selectedOptions[0];
      const model = chosen && chosen.dataset.model;
      if (model && hasOption(modelPicker, model)) modelPicker.value = model;
    }
    modelPicker.addEventListener("change", () => localStorage.setItem("domicile-model", modelPicker.value));
    gptPicker.addEventListener("change", followGpt);
    if (gptPicker.value) followGpt();

    // -- the phone's sidebar
    const menu = $("#menu");
    function setSidebar(open) {
      document.body.classList.toggle("sidebar-open", open);
      if (menu) menu.setAttribute("aria-expanded", String(open));
      if (open) $("#new-chat").focus();
    }
    if (menu) menu.addEventListener("click", () => setSidebar(!document.body.classList.contains("sidebar-open")));
    $("#close-sidebar").addEventListener("click", () => { setSidebar(false); if (menu) menu.focus(); });

    // -- messages
    function updateEmptyState() {
      emptyState.hidden = messages.children.length > 0;
    }

    function showFiles(container, fileIds) {
      for (const id of fileIds) {
        const slot = el("span", { className: "file-slot" });
        container.append(slot);
        fileDescription(id).then((info) => {
          if (info && info.media_type && info.media_type.startsWith("image/")) {
            slot.replaceWith(el("img", {
              className: "attachment-image", src: `${API}/files/${encodeURIComponent(id)}/content`,
              alt: info.name, loading: "lazy",
            }));
          } else {
            slot.replaceWith(el("span", { className: "file-chip" }, info ? info.name : "A file that was deleted"));
          }
        });
      }
    }

    async function fileDescription(id) {
      if (fileInfo.has(id)) return fileInfo.get(id);
      try {
        const info = await api("GET", `/files/${encodeURIComponent(id)}`);
        fileInfo.set(id, info);
        return info;
      } catch (_) {
        return null;
      }
    }

    function setContent(article, message) {
      const content = $(".content", article);
      contentOf.set(article, message.content || "");
      if (message.role === "assistant" && message.html) {
        content.innerHTML = message.html; // sanitised by the server (render_markdown + nh3)
      } else {
        content.textContent = message.content || "";
      }
    }

    function messageArticle(message) {
      const article = el("article", {
        className: "message",
        dataset: { role: message.role, id: message.id || "", status: message.status || "complete",
          parentId: message.parent_id || "" },
      });
      article.append(el("p", { className: "who" }, message.role === "user" ? "You" : (message.model || "Assistant")));
      article.append(el("div", { className: "content" }));
      setContent(article, message);
      const files = el("div", { className: "files" });
      article.append(files);
      showFiles(files, message.file_ids || []);
      if (message.citations && message.citations.length) {
        const names = [...new Set(message.citations.map((c) => c.name))];
        article.append(el("p", { className: "citations" }, `Sources: ${names.join(", ")}`));
      }
      noteStatus(article);
      article.append(el("div", { className: "tools" }));
      return article;
    }

    function noteStatus(article) {
      const old = $(".status-note", article);
      if (old) old.remove();
      const words = { stopped: "Stopped before the end.", error: "The reply broke off." }[article.dataset.status];
      if (words) $(".content", article).after(el("p", { className: "status-note" }, words));
    }

    /** Copy on every reply; edit on the member's last message, regenerate on the last reply. */
    function updateTools() {
      const articles = $$("article.message", messages);
      const lastUser = articles.filter((a) => a.dataset.role === "user").pop();
      const lastReply = articles.filter((a) => a.dataset.role === "assistant").pop();
      for (const article of articles) {
        const tools = $(".tools", article);
        tools.replaceChildren();
        if (article.dataset.role === "assistant" && article.dataset.status !== "streaming") {
          tools.append(el("button", { type: "button", className: "copy", "aria-label": "Copy the reply" }, "Copy"));
          if (article === lastReply && !streaming) {
            tools.append(el("button", { type: "button", className: "regenerate", "aria-label": "Regenerate the reply" }, "Regenerate"));
          }
        }
        if (article === lastUser && !streaming && article.dataset.id) {
          tools.append(el("button", { type: "button", className: "edit", "aria-label": "Edit your message" }, "Edit"));
        }
      }
    }

    function scrollDown() {
      messages.scrollTop = messages.scrollHeight;
    }

    async function loadConversation(attempt = 0) {
      let conversation;
      try {
        conversation = await api("GET", `/conversations/${encodeURIComponent(conversationId)}`);
      } catch (error) {
        showError(chatError, error.status === 404 ? "This conversation does not exist, or was deleted." : error);
        updateEmptyState();
        return;
      }
      const byId = new Map(conversation.messages.map((m) => [m.id, m]));
      const branch = conversation.branch.map((id) => byId.get(id)).filter(Boolean);
      // A reply still being stored (just stopped, say): look again shortly.
      if (branch.length && branch[branch.length - 1].role === "user" && attempt < 5) {
        setTimeout(() => loadConversation(attempt + 1), 600);
      }
      messages.replaceChildren(...branch.map(messageArticle));
      if (conversation.model && hasOption(modelPicker, conversation.model) && !savedModel) modelPicker.value = conversation.model;
      if (conversation.gpt_id && hasOption(gptPicker, conversation.gpt_id) && !new URLSearchParams(location.search).get("gpt")) {
        gptPicker.value = conversation.gpt_id;
      }
      updateEmptyState();
      updateTools();
      scrollDown();
    }

    messages.addEventListener("click", async (event) => {
      const button = event.target.closest("button");
      if (!button) return;
      const article = button.closest("article.message");
      if (button.classList.contains("copy")) {
        try {
          await navigator.clipboard.writeText(contentOf.get(article) || $(".content", article).textContent);
          button.textContent = "Copied";
          setTimeout(() => { button.textContent = "Copy"; }, 1500);
        } catch (_) {
          showError(chatError, "The browser did not allow copying. Select the text and copy it instead.");
        }
      } else if (button.classList.contains("edit")) {
        editing = { article, parentId: article.dataset.parentId || null };
        composer.value = contentOf.get(article) || "";
        editingNote.hidden = false;
        composer.focus();
      } else if (button.classList.contains("regenerate")) {
        if (streaming) return;
        article.remove();
        updateTools();
        await streamReply(`/conversations/${encodeURIComponent(conversationId)}/regenerate`,
          { model: modelPicker.value || undefined, stream: true }, null);
      }
    });

    $("#cancel-edit").addEventListener("click", stopEditing);
    function stopEditing() {
      editing = null;
      editingNote.hidden = true;
    }

    // -- attachments
    function addFiles(files) {
      for (const file of files) {
        const element = el("div", { className: "attachment" });
        if (file.type.startsWith("image/")) {
          const preview = el("img", { className: "preview", alt: "" });
          preview.src = URL.createObjectURL(file);
          element.append(preview);
        }
        element.append(el("span", { className: "name" }, file.name));
        const progress = el("progress", { className: "upload-progress", max: "100", value: "0", "aria-label": `Uploading ${file.name}` });
        element.append(progress);
        const remove = el("button", { type: "button", "aria-label": `Remove ${file.name}` }, "×");
        element.append(remove);
        attachmentsBox.append(element);
        const entry = { file, element, stored: null, failed: null };
        entry.promise = upload(file, progress).then((stored) => {
          entry.stored = stored;
          fileInfo.set(stored.id, stored);
          progress.hidden = true;
        }, (error) => {
          entry.failed = error;
          progress.hidden = true;
          element.classList.add("failed");
          element.append(el("span", { className: "hint" }, "not uploaded"));
          showError(chatError, `${file.name}: ${describe(error)}`);
        });
        remove.addEventListener("click", () => {
          attachments = attachments.filter((a) => a !== entry);
          element.remove();
          const preview = $("img.preview", element);
          if (preview) URL.revokeObjectURL(preview.src);
        });
        attachments.push(entry);
      }
    }
    attach.addEventListener("change", () => { addFiles(attach.files); attach.value = ""; });
    composer.addEventListener("paste", (event) => {
      const files = event.clipboardData && event.clipboardData.files;
      if (files && files.length) { event.preventDefault(); addFiles(files); }
    });
    form.addEventListener("dragover", (event) => { event.preventDefault(); form.classList.add("dragging"); });
    form.addEventListener("dragleave", () => form.classList.remove("dragging"));
    form.addEventListener("drop", (event) => {
      event.preventDefault();
      form.classList.remove("dragging");
      if (event.dataTransfer && event.dataTransfer.files.length) addFiles(event.dataTransfer.files);
    });

    // -- sending
    composer.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        form.requestSubmit();
      }
    });
    document.addEventListener("keydown", (event) => {
      if (event.key !== "Escape") return;
      if (streaming) { event.preventDefault(); streaming.controller.abort(); }
      else if (document.body.classList.contains("sidebar-open")) setSidebar(false);
    });
    stopButton.addEventListener("click", () => { if (streaming) streaming.controller.abort(); });

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      if (streaming) return;
      const text = composer.value;
      if (!text.trim() && !attachments.length) return;
      showError(chatError, null);
      sendButton.disabled = true;
      try {
        await Promise.all(attachments.map((a) => a.promise));
        if (attachments.some((a) => a.failed)) {
          showError(chatError, "A file was not uploaded. Remove it, or attach it again.");
          return;
        }
        if (!conversationId) {
          const created = await api("POST", "/conversations", {
            model: modelPicker.value || undefined, gpt_id: gptPicker.value || undefined,
          });
          conversationId = created.id;
          history.pushState(null, "", `/workspace/c/${encodeURIComponent(conversationId)}${location.search}`);
        }
      } catch (error) {
        showError(chatError, error);
        return;
      } finally {
        sendButton.disabled = false;
      }
      const sent = attachments;
      const body = {
        content: text, model: modelPicker.value || undefined, gpt_id: gptPicker.value || undefined,
        file_ids: sent.map((a) => a.stored.id), stream: true,
      };
      const removed = [];
      if (editing) {
        body.parent_id = editing.parentId;
        body.edit = true;
        // The edited message and what followed it leave the view (the server keeps them).
        let node = editing.article;
        while (node) { const next = node.nextElementSibling; removed.push(node); node.remove(); node = next; }
        stopEditing();
      }
      const mine = messageArticle({ role: "user", content: text, status: "complete", file_ids: body.file_ids });
      messages.append(mine);
      composer.value = "";
      attachments = [];
      attachmentsBox.replaceChildren();
      updateEmptyState();
      const ok = await streamReply(`/conversations/${encodeURIComponent(conversationId)}/messages`, body, mine);
      if (!ok) {
        // Not kept by the server: the text goes back to the composer, the files with it.
        mine.remove();
        if (removed.length) messages.append(...removed);
        composer.value = text;
        attachments = sent;
        attachmentsBox.append(...sent.map((a) => a.element));
        updateEmptyState();
        updateTools();
      }
    });

    /** POST `path` with `stream: true` and show the reply as it comes. False when the server
     * refused the request before anything was stored. */
    async function streamReply(path, body, userArticle) {
      const controller = new AbortController();
      const article = messageArticle({ role: "assistant", content: "", status: "streaming", model: body.model });
      streaming = { controller, article };
      stopButton.hidden = false;
      sendButton.hidden = true;
      updateTools();
      let started = false;
      let finished = false;
      try {
        const response = await fetch(API + path, {
          method: "POST", credentials: "same-origin", headers: headers(true),
          body: JSON.stringify(body), signal: controller.signal,
        });
        if (!response.ok) throw await errorFrom(response);
        started = true;
        messages.append(article);
        updateEmptyState();
        scrollDown();
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        let text = "";
        const content = $(".content", article);
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            const data = block.split("\n").filter((line) => line.startsWith("data:"))
              .map((line) => line.slice(5).trimStart()).join("\n");
            if (!data) continue;
            const event = JSON.parse(data);
            if (event.type === "message.created") {
              if (userArticle) {
                userArticle.dataset.id = event.message.id;
                userArticle.dataset.parentId = event.message.parent_id || "";
              }
            } else if (event.type === "reply.delta") {
              text += event.delta;
              content.textContent = text; // model text as text, never as markup
              contentOf.set(article, text);
              scrollDown();
            } else if (event.type === "reply.completed") {
              finished = true;
              article.dataset.id = event.message.id;
              article.dataset.status = event.message.status;
              article.dataset.parentId = event.message.parent_id || "";
              $(".who", article).textContent = event.message.model || "Assistant";
              setContent(article, event.message);
              const files = $(".files", article);
              files.replaceChildren();
              showFiles(files, event.message.file_ids || []);
              if (event.error) showError(chatError, errorWords(event.error));
            } else if (event.type === "error") {
              finished = true;
              article.dataset.status = "error";
              showError(chatError, errorWords(event.error));
            }
          }
        }
        if (!finished) article.dataset.status = "error";
      } catch (error) {
        if (error && error.name === "AbortError") {
          if (started) article.dataset.status = "stopped";
        } else if (!started) {
          showError(chatError, error);
        } else {
          article.dataset.status = "error";
          showError(chatError, "The connection broke off before the reply was complete.");
        }
      } finally {
        noteStatus(article);
        streaming = null;
        stopButton.hidden = true;
        sendButton.hidden = false;
        updateTools();
        loadConversations();
      }
      return started;
    }

    function errorWords(error) {
      return describe(new ApiError(error.code === "no_in_region_provider" ? 503 : 500, error.message || "", error.code || ""));
    }

    // -- the conversation list
    function dayLabel(seconds) {
      const day = new Date(seconds * 1000);
      const today = new Date();
      const start = (d) => new Date(d.getFullYear(), d.getMonth(), d.getDate()).getTime();
      const difference = Math.round((start(today) - start(day)) / 86400000);
      if (difference === 0) return "Today";
      if (difference === 1) return "Yesterday";
      return day.toLocaleDateString(undefined, { year: "numeric", month: "short", day: "numeric" });
    }

    let listRequest = 0;
    async function loadConversations() {
      const mine = ++listRequest;
      const query = search.value.trim();
      let found;
      try {
        found = await api("GET", `/conversations?limit=100${query ? `&q=${encodeURIComponent(query)}` : ""}`);
      } catch (error) {
        if (mine === listRequest) list.replaceChildren(el("p", { className: "hint" }, describe(error)));
        return;
      }
      if (mine !== listRequest) return; // a newer search answered first
      const items = [];
      let lastDay = null;
      for (const conversation of found.data) {
        const day = dayLabel(conversation.updated_at);
        if (day !== lastDay) { items.push(el("h3", { className: "day" }, day)); lastDay = day; }
        items.push(conversationItem(conversation));
      }
      if (!items.length) {
        items.push(el("p", { className: "hint" }, query ? "No conversation title matches." : "No conversations yet."));
      }
      list.replaceChildren(...items);
    }

    function conversationItem(conversation) {
      const title = conversation.title || "New conversation";
      const item = el("div", { className: `conversation-item${conversation.id === conversationId ? " current" : ""}` });
      const link = el("a", {
        className: "conversation", href: `/workspace/c/${encodeURIComponent(conversation.id)}`,
        dataset: { id: conversation.id }, "aria-current": conversation.id === conversationId ? "page" : null,
      }, title);
      const rename = el("button", { type: "button", className: "rename", "aria-label": `Rename “${title}”` }, "Rename");
      const remove = el("button", { type: "button", className: "delete", "aria-label": `Delete “${title}”` }, "Delete");
      item.append(link, rename, remove);
      rename.addEventListener("click", () => startRename(item, link, conversation));
      remove.addEventListener("click", async () => {
        if (!window.confirm(`Delete “${title}” and its messages? This cannot be undone.`)) return;
        try {
          await api("DELETE", `/conversations/${encodeURIComponent(conversation.id)}`);
        } catch (error) {
          showError(chatError, error);
          return;
        }
        if (conversation.id === conversationId) location.assign("/workspace/");
        else loadConversations();
      });
      return item;
    }

    function startRename(item, link, conversation) {
      const input = el("input", { type: "text", value: conversation.title, maxlength: "200", "aria-label": "New title" });
      item.replaceChildren(input);
      input.focus();
      input.select();
      let done = false;
      const finish = async (save) => {
        if (done) return;
        done = true;
        const title = input.value.trim();
        if (save && title && title !== conversation.title) {
          try {
            await api("PATCH", `/conversations/${encodeURIComponent(conversation.id)}`, { title });
          } catch (error) {
            showError(chatError, error);
          }
        }
        loadConversations();
      };
      input.addEventListener("keydown", (event) => {
        if (event.key === "Enter") { event.preventDefault(); finish(true); }
        if (event.key === "Escape") { event.preventDefault(); event.stopPropagation(); finish(false); }
      });
      input.addEventListener("blur", () => finish(true));
    }

    let searchTimer = 0;
    search.addEventListener("input", () => {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(loadConversations, 200);
    });

    window.addEventListener("popstate", () => location.reload());

    loadConversations();
    if (conversationId) loadConversation();
    else updateEmptyState();
    composer.focus();
  }

  // -- the GPT builder --------------------------------------------------------------------------

  function gptFormPage() {
    const form = $("#gpt-form");
    const errorBox = $("#gpt-error");
    const progress = $("#gpt-upload");
    const gptId = form.dataset.gptId;
    const existing = (form.dataset.fileIds || "").split(" ").filter(Boolean);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      showError(errorBox, null);
      const save = $("#gpt-save");
      save.disabled = true;
      try {
        const fileIds = [...existing];
        const chosen = Array.from($("#gpt-files").files);
        for (const file of chosen) {
          progress.hidden = false;
          progress.value = 0;
          const stored = await upload(file, progress);
          fileIds.push(stored.id);
        }
        progress.hidden = true;
        const body = {
          name: $("#gpt-name").value.trim(),
          description: $("#gpt-description").value.trim(),
          instructions: $("#gpt-instructions").value,
          model: $("#gpt-model").value,
          conversation_starters: $("#gpt-starters").value.split("\n").map((s) => s.trim()).filter(Boolean),
          file_ids: fileIds,
          sharing: $("#gpt-sharing").value,
        };
        if (gptId) await api("PATCH", `/gpts/${encodeURIComponent(gptId)}`, body);
        else await api("POST", "/gpts", body);
        location.assign("/workspace/gpts");
      } catch (error) {
        progress.hidden = true;
        showError(errorBox, error);
        save.disabled = false;
      }
    });
    const remove = $("#gpt-delete");
    if (remove) {
      remove.addEventListener("click", async () => {
        if (!window.confirm("Delete this GPT? Conversations with it stay.")) return;
        try {
          await api("DELETE", `/gpts/${encodeURIComponent(gptId)}`);
          location.assign("/workspace/gpts");
        } catch (error) {
          showError(errorBox, error);
        }
      });
    }
  }

  // -- settings ---------------------------------------------------------------------------------

  function settingsPage() {
    const errorBox = $("#settings-error");
    const tokens = $("#tokens");
    tokens.addEventListener("click", async (event) => {
      const button = event.target.closest(".revoke-token");
      if (!button) return;
      if (!window.confirm("Revoke this token? Programs using it stop working within a second.")) return;
      try {
        await api("DELETE", `/tokens/${encodeURIComponent(button.dataset.id)}`);
        button.closest("li").remove();
      } catch (error) {
        showError(errorBox, error);
      }
    });
    $("#create-token").addEventListener("click", async () => {
      showError(errorBox, null);
      try {
        const created = await api("POST", "/tokens");
        const box = $("#new-token");
        box.replaceChildren(
          el("p", {}, "Your new token. Copy it now: it is not shown again."),
          el("code", {}, created.token));
        box.hidden = false;
        const empty = $("li.empty", tokens);
        if (empty) empty.remove();
        const row = el("li", { dataset: { id: created.id } });
        row.append(el("span", {}, created.id),
          el("button", { type: "button", className: "revoke-token danger", dataset: { id: created.id }, "aria-label": `Revoke token ${created.id}` }, "Revoke"));
        tokens.append(row);
      } catch (error) {
        showError(errorBox, error);
      }
    });
    $("#end-other-sessions").addEventListener("click", async () => {
      const status = $("#sessions-status");
      try {
        const result = await api("POST", "/sessions/end-others");
        status.textContent = result.ended === 1 ? "1 other session was signed out." : `${result.ended} other sessions were signed out.`;
      } catch (error) {
        showError(errorBox, error);
      }
    });
  }

  // -- admin ------------------------------------------------------------------------------------

  function adminPage() {
    const errorBox = $("#admin-error");
    const table = $("#members");
    table.addEventListener("change", async (event) => {
      const select = event.target.closest("select.role");
      if (!select) return;
      showError(errorBox, null);
      try {
        await api("PATCH", `/members/${encodeURIComponent(select.dataset.id)}`, { role: select.value });
      } catch (error) {
        showError(errorBox, error);
        location.reload();
      }
    });
    table.addEventListener("click", async (event) => {
      const button = event.target.closest(".remove-member");
      if (!button) return;
      if (!window.confirm("Remove this member? Their tokens and sessions end now.")) return;
      try {
        await api("DELETE", `/members/${encodeURIComponent(button.dataset.id)}`);
        button.closest("tr").remove();
      } catch (error) {
        showError(errorBox, error);
      }
    });
    $("#add-member-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      showError(errorBox, null);
      try {
        await api("POST", "/members", {
          email: $("#new-member-email").value.trim(), role: $("#new-member-role").value,
          password: $("#new-member-password").value,
        });
        location.reload();
      } catch (error) {
        showError(errorBox, error);
      }
    });
    $("#retention-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      showError(errorBox, null);
      const raw = $("#retention-days").value.trim();
      try {
        const workspace = await api("PATCH", "/workspace", { retention_days: raw ? Number(raw) : null });
        $("#retention").textContent = workspace.retention_days
          ? `Deleted after ${workspace.retention_days} days` : "Kept until you delete it";
      } catch (error) {
        showError(errorBox, error);
      }
    });
    loadUsage();
  }

  async function loadUsage() {
    const box = $("#usage");
    let usage;
    try {
      usage = await api("GET", "/usage");
    } catch (error) {
      box.replaceChildren(el("p", { className: "hint" }, describe(error)));
      return;
    }
    if (!usage.data.length || usage.data.every((row) => !row.messages)) {
      box.replaceChildren(el("p", { className: "hint" }, "No usage recorded yet."));
      return;
    }
    const table = el("table");
    const head = el("tr");
    for (const title of ["Member", "Replies", "Prompt tokens", "Completion tokens"]) head.append(el("th", { scope: "col" }, title));
    table.append(el("thead"), el("tbody"));
    table.tHead.append(head);
    for (const row of usage.data) {
      const line = el("tr");
      line.append(el("td", {}, row.email), el("td", {}, String(row.messages)),
        el("td", {}, String(row.prompt_tokens)), el("td", {}, String(row.completion_tokens)));
      table.tBodies[0].append(line);
    }
    const scroll = el("div", { className: "table-scroll" });
    scroll.append(table);
    box.replaceChildren(scroll);
  }

  const pages = { chat: chatPage, "gpt-form": gptFormPage, settings: settingsPage, admin: adminPage };
  const start = pages[document.body.dataset.page];
  if (start) start();
})();
