'use strict'
// CommonJS entry for the smoke script: require() the package, then run the
// same checks as smoke.mjs on what require() returned.
const api = require('stoma-native')

import('./smoke.mjs')
  .then((smoke) => smoke.run(api, 'require'))
  .catch((error) => {
    console.error(error)
    process.exit(1)
  })
