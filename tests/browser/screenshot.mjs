#!/usr/bin/env node
// Logs in to the Lifeboat web console in Debian's Chromium and screenshots
// pages, for the end-to-end tests (tests/src/browser.rs) and for people.
//
//   node screenshot.mjs --url https://127.0.0.1:PORT --user admin --password P \
//        --out DIR (--ca CA.pem | --ca-ignore) [--page PATH]...
//
// Writes DIR/dashboard.png and, for every --page, DIR/<PATH with / as ->.png
// (e.g. --page /vms/ID writes vms-ID.png). A page PATH#FIELD=VALUE is a
// refusal: the form holding FIELD on PATH is submitted with VALUE typed in,
// and the answer must be 400 with the value kept and a reason next to the
// field (vms-ID-enabled-x.png). Exits non-zero if
// the login fails (still on /login afterwards), a page answers other than
// 200 or shows no text, or anything takes too long.
//
// Chromium cannot be told to trust one private CA without an NSS database,
// so with --ca the certificate is verified here first, by Node against that
// CA (chain and IP address), and Chromium then ignores certificate errors.

import https from 'node:https';
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
];
const TOTAL_TIMEOUT_MS = 120_000;
const STEP_TIMEOUT_MS = 30_000;

function parseArgs(argv) {
  const options = { pages: [], ca: null, caIgnore: false };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) fail(`${flag} needs a value`);
      return argv[++i];
    };
    switch (flag) {
      case '--url': options.url = value().replace(/\/+$/, ''); break;
      case '--user': options.user = value(); break;
      case '--password': options.password = value(); break;
      case '--out': options.out = value(); break;
      case '--page': options.pages.push(value()); break;
      case '--ca': options.ca = value(); break;
      case '--ca-ignore': options.caIgnore = true; break;
      default: fail(`unknown argument ${flag}`);
    }
  }
  for (const required of ['url', 'user', 'password', 'out']) {
    if (!options[required]) fail(`--${required} is required`);
  }
  if (!options.ca && !options.caIgnore) fail('give --ca CA.pem or --ca-ignore');
  return options;
}

function fail(message) {
  console.error(`screenshot.mjs: ${message}`);
  process.exit(1);
}

/// Resolves if `url` presents a certificate that chains to `caFile` and
/// names the host, as a browser trusting that CA would require.
function verifyCertificate(url, caFile) {
  const ca = fs.readFileSync(caFile);
  return new Promise((resolve, reject) => {
    const request = https.get(url, { ca, timeout: STEP_TIMEOUT_MS }, (response) => {
      response.resume();
      resolve();
    });
    request.on('timeout', () => request.destroy(new Error('timed out')));
    request.on('error', (error) => reject(new Error(`TLS check of ${url} against ${caFile}: ${error.message}`)));
  });
}

const pathOf = (page) => new URL(page.url()).pathname;
const pngName = (urlPath) => `${urlPath.replace(/^\/+/, '').replace(/[^A-Za-z0-9._-]+/g, '-')}.png`;

async function login(page, options) {
  const response = await page.goto(`${options.url}/login`);
  if (!response || response.status() !== 200) {
    throw new Error(`GET /login answered ${response ? response.status() : 'nothing'}`);
  }
  await page.fill('[name="username"]', options.user);
  await page.fill('[name="password"]', options.password);
  const submit = page.locator('form:has([name="username"]) :is(button, input[type="submit"])').first();
  if ((await submit.count()) === 0) throw new Error('the login form has no submit button');
  await Promise.all([page.waitForNavigation(), submit.click()]);
  if (pathOf(page) === '/login') {
    throw new Error(`login as ${options.user} failed: still on /login`);
  }
}

async function screenshot(page, options, urlPath, file) {
  const response = await page.goto(`${options.url}${urlPath}`);
  const status = response ? response.status() : 'nothing';
  if (status !== 200) throw new Error(`GET ${urlPath} answered ${status}`);
  if (pathOf(page) === '/login') throw new Error(`GET ${urlPath} went back to /login: the session was not kept`);
  const text = await page.evaluate(() => document.body ? document.body.innerText.trim() : '');
  if (!text) throw new Error(`${urlPath} shows no text`);
  const out = path.join(options.out, file);
  await page.screenshot({ path: out, fullPage: true });
  console.log(`screenshot ${urlPath} -> ${out}`);
}

async function refuse(page, options, spec) {
  const [urlPath, assignment] = spec.split('#');
  const equals = assignment.indexOf('=');
  const [field, value] = [assignment.slice(0, equals), assignment.slice(equals + 1)];
  const response = await page.goto(`${options.url}${urlPath}`);
  if (!response || response.status() !== 200) throw new Error(`GET ${urlPath} answered ${response ? response.status() : 'nothing'}`);
  const form = page.locator(`form.stack:has([name="${field}"])`).first();
  if ((await form.count()) === 0) throw new Error(`${urlPath} has no form with a field ${field}`);
  await form.locator(`[name="${field}"]`).fill(value);
  const [answer] = await Promise.all([
    page.waitForNavigation(),
    form.locator('button[type="submit"]').first().click(),
  ]);
  if (!answer || answer.status() !== 400) throw new Error(`submitting ${field}=${value} on ${urlPath} answered ${answer ? answer.status() : 'nothing'}, not 400`);
  const invalid = page.locator(`.field.invalid:has([name="${field}"])`);
  if ((await invalid.count()) === 0) throw new Error(`${urlPath}: no reason shown next to ${field}`);
  const kept = await invalid.locator(`[name="${field}"]`).inputValue();
  if (kept !== value) throw new Error(`${urlPath}: ${field} shows ${JSON.stringify(kept)}, not what was entered`);
  const reason = (await invalid.locator('.error').innerText()).trim();
  if (!reason) throw new Error(`${urlPath}: the reason next to ${field} is empty`);
  const out = path.join(options.out, pngName(spec));
  await page.screenshot({ path: out, fullPage: true });
  console.log(`refused ${field}=${value} on ${urlPath}: ${reason} -> ${out}`);
}

async function main() {
  const options = parseArgs(process.argv.slice(2));
  setTimeout(() => fail(`gave up after ${TOTAL_TIMEOUT_MS} ms`), TOTAL_TIMEOUT_MS).unref();
  fs.mkdirSync(options.out, { recursive: true });
  if (options.ca) await verifyCertificate(`${options.url}/login`, options.ca);

  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
  try {
    const context = await browser.newContext({
      ignoreHTTPSErrors: true,
      viewport: { width: 1280, height: 800 },
    });
    context.setDefaultTimeout(STEP_TIMEOUT_MS);
    const page = await context.newPage();
    page.on('pageerror', (error) => console.error(`page error: ${error.message}`));
    page.on('console', (message) => {
      if (message.type() === 'error') console.error(`console error: ${message.text()}`);
    });

    await login(page, options);
    await screenshot(page, options, '/', 'dashboard.png');
    for (const urlPath of options.pages) {
      if (urlPath.includes('#')) await refuse(page, options, urlPath);
      else await screenshot(page, options, urlPath, pngName(urlPath));
    }
  } finally {
    await browser.close();
  }
}

main().catch((error) => fail(error.message));
